"""The detector: evaluates rules over event-time windows (SPEC 4.1). Pure: state is injected."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from streams.core.classify import FACE, NONE, EnrichedEvent
from streams.core.conditions import FIELDS
from streams.core.exceptions import ExceptionFilter
from streams.core.rules import Requirement, Rule, RuleSet
from streams.core.state import WindowState, WindowStore, id_hash, window_key
from streams.core.windows import window_start
from topics.accounts import AccountRecord
from topics.alerts import ACCOUNT_FIELDS, MAX_SAMPLES, Alert, alert_id


@dataclass(slots=True)
class Observation:
    """What one event did: rules it newly counted for, alerts, and whether it was a redelivery.

    `duplicate` is decided by the event's primary scope: the first of account_id, org_id in
    which one of its rules matched.
    """

    matched: list[str] = field(default_factory=list)
    duplicate: bool = False
    alerts: list[Alert] = field(default_factory=list)


SCOPE_ORDER = ("account_id", "org_id")
MAX_IDS_PER_WINDOW = 100_000  # beyond this a window stops recognising redeliveries (SPEC 4.1)

# returned for the many events that match no rule; never mutated
NOTHING = Observation()


def group_key(rule: Rule, ee: EnrichedEvent) -> str | None:
    """The event's key for the rule's group_by; None means the rule does not apply."""
    return ee.event.account_id if rule.group_by == "account_id" else ee.org_id


def account_snapshot(ee: EnrichedEvent) -> dict[str, Any]:
    """The alert's `account` block: the firing event's account, nulls when unknown."""
    acc: AccountRecord | None = ee.account
    if acc is None:
        return {k: (ee.event.account_id if k == "account_id" else None) for k in ACCOUNT_FIELDS}
    return {k: getattr(acc, k) for k in ACCOUNT_FIELDS}


def evidence_sample(ee: EnrichedEvent) -> dict[str, Any]:
    """Request metadata only: never images, embeddings, prompt text or subject ids."""
    e = ee.event
    return {
        "event_id": e.event_id,
        "ts": e.ts_ms,
        "operation": e.operation,
        "api_key_id": e.api_key_id,
        "model": e.model,
        "region": e.region,
        "client_ip": e.client_ip,
        "gallery": {"id": e.gallery.id, "kind": e.gallery.kind} if e.gallery else None,
        "capture": {"device": e.capture.device, "setting": e.capture.setting}
        if e.capture
        else None,
        "intent": {"label": e.intent.label, "score": e.intent.score} if e.intent else None,
    }


def _distinct_values(req: Requirement) -> Callable[[EnrichedEvent], Iterable[str]]:
    get = FIELDS[req.field or ""][0]

    def values(ee: EnrichedEvent) -> Iterable[str]:
        v = get(ee)
        if v is None:
            return ()
        if isinstance(v, tuple):
            return v
        return (str(v),)

    return values


def _satisfied(rule: Rule, st: WindowState) -> bool:
    for i, req in enumerate(rule.requires):
        have = st.req_counts[i] if req.kind == "count" else len(st.distinct[i] or ())
        if have < req.at_least:
            return False
    return True


class RuleIndex:
    """Rules by what an event can match: most events (bio_kind none) need no rule evaluated."""

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules
        self._cache: dict[tuple[str, str, str, str | None], tuple[Rule, ...]] = {}
        #: `admitting`'s answers so far, by (bio_kind, trait, operation, label): the hot
        #: loop's lookup
        self.cached = self._cache.get

    def candidates(self, ee: EnrichedEvent) -> tuple[Rule, ...]:
        """The rules whose gates admit this event, in rule order."""
        intent = ee.event.intent
        return self.admitting(
            ee.bio_kind,
            ee.trait,
            ee.event.operation,
            intent.label if intent is not None else None,
        )

    def admitting(
        self, bio_kind: str, trait: str, operation: str, label: str | None
    ) -> tuple[Rule, ...]:
        """The rules whose bio_kind, trait, fr_kind, operation and intent.label gates admit these."""
        key = (bio_kind, trait, operation, label)
        found = self._cache.get(key)
        if found is None:
            fr_kind = bio_kind if trait == FACE else NONE
            found = tuple(
                r
                for r in self.rules
                if (r.kinds is None or fr_kind in r.kinds)
                and (r.bio_kinds is None or bio_kind in r.bio_kinds)
                and (r.traits is None or trait in r.traits)
                and (r.operations is None or operation in r.operations)
                and (r.intent_labels is None or label in r.intent_labels)
            )
            if len(self._cache) < 4096:  # operation names are open-ended: bound the cache
                self._cache[key] = found
        return found


class Detector:
    """Runs a rule set (or the rules of one group_by scope) against enriched events."""

    def __init__(
        self,
        rules: RuleSet,
        store: WindowStore,
        scope: str | None = None,
        exceptions: ExceptionFilter | None = None,
    ) -> None:
        self.rule_set = rules
        #: SPEC 4.4: what keeps an event from a rule (None: nothing does)
        self.exceptions = exceptions
        # account rules before org rules: an event's *primary* scope is the first in which a
        # rule matches, and only that scope decides whether the event was a redelivery, so
        # that live (one worker per scope) and replay count duplicates alike
        self.rules = tuple(
            sorted(
                (r for r in rules.rules if scope is None or r.group_by == scope),
                key=lambda r: SCOPE_ORDER.index(r.group_by),
            )
        )
        self.store = store
        self.watermark_ms = 0
        self._swept_ms = -1  # the retention clock at the last expiry pass
        self.index = RuleIndex(self.rules)
        self._values = {
            (r.id, i): _distinct_values(q)
            for r in self.rules
            for i, q in enumerate(r.requires)
            if q.kind == "distinct"
        }

    def matching_rules(self, ee: EnrichedEvent) -> list[Rule]:
        """Rules whose match condition holds and whose group key is known."""
        return [
            r for r in self.index.candidates(ee) if r.match(ee) and group_key(r, ee) is not None
        ]

    def observe(self, ee: EnrichedEvent, matched: tuple[str, ...] | None = None) -> Observation:
        """Count the event in every window it belongs to; return the alerts it fires.

        `matched`: the ids of the rules that match it, when the caller knows them (the live
        detect stage: ingest matched them under the same rules); None: match here.
        """
        ts = ee.event.ts_ms
        if ts > self.watermark_ms:
            self.watermark_ms = ts
        obs = NOTHING
        primary = None
        rules = self.index.candidates(ee) if matched is None else self._known(matched)
        for rule in rules:
            if matched is None and not rule.match(ee):
                continue
            gk = group_key(rule, ee)
            if gk is None:
                continue
            if self.exceptions is not None and self.exceptions.covers(rule.id, ee):
                continue  # neither starts nor grows a window, nor counts as a match (SPEC 4.4)
            if obs is NOTHING:
                obs = Observation()
                primary = rule.group_by
            if self._count(rule, gk, ee, obs) and rule.group_by == primary:
                obs.duplicate = True
        return obs

    def _known(self, rule_ids: tuple[str, ...]) -> list[Rule]:
        """These rules of this detector, in its order (ids of other scopes are left out)."""
        return [r for r in self.rules if r.id in rule_ids]

    def expire(self) -> int:
        """Drop window states that event time has left more than 24h behind.

        A pass runs only when the retention clock has moved since the last one (SPEC 4.1):
        a window that a late event started beyond retention then lives until the clock next
        moves, so that the late events that follow it count with it and may fire it again.
        Windows that were in time become due only when the clock moves, so they are unaffected.
        """
        if self.watermark_ms <= self._swept_ms:
            return 0
        self._swept_ms = self.watermark_ms
        return self.store.expire(self.watermark_ms)

    def _count(self, rule: Rule, gk: str, ee: EnrichedEvent, obs: Observation) -> bool:
        """Count the event in the rule's window; True when the window recognised a redelivery."""
        e = ee.event
        start = window_start(e.ts_ms, rule.window_ms)
        key = window_key(rule.id, rule.state_version, start, start + rule.window_ms, gk)
        st = self.store.get(key)
        h = id_hash(e.event_id)
        if st is None:
            st = WindowState(len(rule.requires))
        elif h in st.ids:
            return True
        obs.matched.append(rule.id)
        if st.fired:
            # fired windows stop growing: a window fires at most once
            return False
        for i, req in enumerate(rule.requires):
            if req.where is not None and not req.where(ee):
                continue
            if req.kind == "count":
                st.req_counts[i] += 1
                continue
            seen = st.distinct[i]
            if seen is None:
                seen = st.distinct[i] = []
            if len(seen) < req.at_least:  # distinct values are kept only up to the threshold
                for v in self._values[(rule.id, i)](ee):
                    if v not in seen:
                        seen.append(v)
                        if len(seen) >= req.at_least:
                            break
        st.count += 1
        # Until the window fires, every counted id is kept: a redelivery must add nothing
        # whatever its other fields (a redelivered enrolment re-sent as an identification
        # must not complete FR-007). A window that never fires is bounded by the safety cap.
        if len(st.ids) < MAX_IDS_PER_WINDOW:
            st.ids.add(h)
            if st.id_order is not None:
                st.id_order.append(h)
        if len(st.samples) < MAX_SAMPLES:
            st.samples.append(evidence_sample(ee))
        if _satisfied(rule, st):
            st.fired = True
            obs.alerts.append(self._alert(rule, gk, start, st, ee))
            # only what recognises redeliveries survives firing
            st.distinct = [None] * len(rule.requires)
            st.samples = []
        self.store.put(key, st)
        return False

    def _alert(self, rule: Rule, gk: str, start: int, st: WindowState, ee: EnrichedEvent) -> Alert:
        dreq = rule.distinct_requirement
        distinct = None
        if dreq is not None:
            distinct = len(st.distinct[rule.requires.index(dreq)] or ())
        return Alert(
            alert_id=alert_id(rule.id, gk, start),
            rule_id=rule.id,
            title=rule.title,
            clause=rule.clause,
            severity=rule.severity,
            group_by=rule.group_by,
            group_key=gk,
            account=account_snapshot(ee),
            window_start_ms=start,
            window_end_ms=start + rule.window_ms,
            count=st.count,
            distinct=distinct,
            samples=tuple(st.samples),
            rule_version=rule.version,
            rules_sha256=self.rule_set.sha256,
        )
