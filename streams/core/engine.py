"""The detector: evaluates rules over event-time windows (SPEC 4.1). Pure: state is injected."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from streams.core.classify import FACE, NONE, EnrichedEvent
from streams.core.conditions import FIELDS
from streams.core.exceptions import ExceptionFilter
from streams.core.rules import Requirement, Rule, RuleSet
from streams.core.state import (
    MAX_EXACT,
    NOTHING_DUE,
    Due,
    WindowLifecycle,
    WindowState,
    WindowStore,
    id_hash,
    new_sketch,
    split_window_key,
    window_key,
)
from streams.core.windows import window_start
from topics.accounts import AccountRecord
from topics.alerts import ACCOUNT_FIELDS, MAX_SAMPLES, Alert, alert_id
from topics.window_state import AlertProgress


@dataclass(slots=True)
class Observation:
    """What one event did: rules it newly counted for, alerts, and whether it was a redelivery.

    `duplicate` is decided by the event's primary scope: the first of account_id, org_id in
    which one of its rules matched.
    """

    matched: list[str] = field(default_factory=list)
    duplicate: bool = False
    alerts: list[Alert] = field(default_factory=list)  # windows it fired: `open` revisions
    updates: list[Alert] = field(default_factory=list)  # `update` revisions it caused


SCOPE_ORDER = ("account_id", "org_id")
MAX_IDS_PER_WINDOW = MAX_EXACT  # beyond this a window estimates (SPEC 4.1, 5)

# returned for the many events that match no rule; never mutated
NOTHING = Observation()
NO_REVISIONS: list[Alert] = []  # returned by `expire` when nothing is due; never mutated
NO_DROPS: list[str] = []


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
        have = st.req_counts[i] if req.kind == "count" else st.distinct_count(i)
        if have < req.at_least:
            return False
    return True


def magnitude(rule: Rule, st: WindowState) -> int:
    """How big a window's alert is (SPEC 5): distinct for a distinct rule, else count."""
    dreq = rule.distinct_requirement
    if dreq is None:
        return st.count
    return st.distinct_count(rule.requires.index(dreq))


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
    """Runs a rule set (or the rules of one group_by scope) against enriched events.

    Window states live in `store`; their clock, closing and expiry in `lifecycle` (shared by
    the detectors of one store; by default its own, with one partition, as replay has).
    """

    def __init__(
        self,
        rules: RuleSet,
        store: WindowStore,
        scope: str | None = None,
        lifecycle: WindowLifecycle | None = None,
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
        if lifecycle is None:
            lifecycle = WindowLifecycle(store)
            lifecycle.set_rules(rules.rules)
        self.lifecycle = lifecycle
        self.watermark_ms = 0
        self._swept_ms = -1  # replay's clock at its last pass (`expire`)
        self.index = RuleIndex(self.rules)
        self._values = {
            (r.id, i): _distinct_values(q)
            for r in self.rules
            for i, q in enumerate(r.requires)
            if q.kind == "distinct"
        }
        # every rule of the set (not only the scope's): closing looks a key's rule up
        self._by_version = {(r.id, r.state_version): r for r in rules.rules}

    def matching_rules(self, ee: EnrichedEvent) -> list[Rule]:
        """Rules whose match condition holds and whose group key is known."""
        return [
            r for r in self.index.candidates(ee) if r.match(ee) and group_key(r, ee) is not None
        ]

    def observe(self, ee: EnrichedEvent, matched: tuple[str, ...] | None = None) -> Observation:
        """Count the event in every window it belongs to; return the revisions it causes.

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
        if obs is not NOTHING and len(obs.alerts) > 1:
            self._relate(obs)
        return obs

    def _relate(self, obs: Observation) -> None:
        """One event fired several rules for one group: each alert lists the others (SPEC 5)."""
        by_group: dict[tuple[str, str], list[int]] = {}
        for i, a in enumerate(obs.alerts):
            by_group.setdefault((a.group_by, a.group_key), []).append(i)
        for idxs in by_group.values():
            if len(idxs) < 2:
                continue
            ids = [obs.alerts[i].alert_id for i in idxs]
            for i in idxs:
                a = obs.alerts[i]
                related = tuple(x for x in ids if x != a.alert_id)
                obs.alerts[i] = replace(a, related=related)
                key = self._key_of(a)
                st = self.store.get(key)
                if st is not None and st.alert is not None:
                    st.alert.related = list(related)
                    self.store.put(key, st)

    def _known(self, rule_ids: tuple[str, ...]) -> list[Rule]:
        """These rules of this detector, in its order (ids of other scopes are left out)."""
        return [r for r in self.rules if r.id in rule_ids]

    def _key_of(self, a: Alert) -> str:
        rule = self.rule_set.by_id(a.rule_id)
        return window_key(
            rule.id, rule.state_version, a.window_start_ms, a.window_end_ms, a.group_key
        )

    def expire(self) -> list[Alert]:
        """Replay's pass at the retention clock (the highest event time so far): the closed
        revisions due, and states more than 24h behind (or of retired rule versions) dropped.

        A pass runs only when the clock has moved since the last one (SPEC 4.1): a window
        that a late event started beyond retention then lives until the clock next moves,
        so that the late events that follow it count with it and may fire it again.
        """
        if self.watermark_ms <= self._swept_ms:  # the hot path: the clock did not move
            return NO_REVISIONS
        self._swept_ms = self.watermark_ms
        due = self.lifecycle.tick(0, self.watermark_ms)
        if due is NOTHING_DUE:
            return NO_REVISIONS
        revisions, drops = self._revisions_due(due)
        for key in drops:
            self.store.drop(key)
        return revisions

    def sweep(self, partition: int) -> tuple[list[Alert], list[str]]:
        """What the partition's clock makes due: the revisions to send (closing), and the
        keys to drop once they were sent (expired, with a last `closed` revision for a window
        whose figures changed after closing, and those of retired rule versions)."""
        due = self.lifecycle.sweep(partition)
        if due is NOTHING_DUE:
            return NO_REVISIONS, NO_DROPS
        return self._revisions_due(due)

    def _revisions_due(self, due: Due) -> tuple[list[Alert], list[str]]:
        revisions = []
        for key in due.closing:
            rev = self.close(key)
            if rev is not None:
                revisions.append(rev)
        for key in due.expired:
            rev = self.close(key, final=True)
            if rev is not None:
                revisions.append(rev)
        return revisions, due.retired + due.expired

    def close(self, key: str, final: bool = False) -> Alert | None:
        """The `closed` revision of the fired window under `key`, recorded in its state; None
        when there is none to send (not fired, or already closed and unchanged since).

        `final`: the state is being dropped, so a window whose figures changed after its
        `closed` revision (late events) sends one more.
        """
        st = self.store.get(key)
        if st is None or st.alert is None:
            return None
        progress = st.alert
        if progress.status == "closed" and not (final and progress.changed_after_close):
            return None
        rule_id, version, start, _, gk = split_window_key(key)
        rule = self._by_version.get((rule_id, version))
        if rule is None:
            return None
        progress.revision += 1
        progress.status = "closed"
        progress.changed_after_close = False
        self.store.put(key, st)
        return self._revision(rule, gk, start, st)

    def close_all(self) -> list[Alert]:
        """End of replay input: every fired window not closed (or changed since) closes."""
        revisions = []
        for key in sorted(self.store.window_keys()):
            rev = self.close(key, final=True)
            if rev is not None:
                revisions.append(rev)
        return revisions

    def _count(self, rule: Rule, gk: str, ee: EnrichedEvent, obs: Observation) -> bool:
        """Count the event in the rule's window; True when the window recognised a redelivery."""
        e = ee.event
        start = window_start(e.ts_ms, rule.window_ms)
        key = window_key(rule.id, rule.state_version, start, start + rule.window_ms, gk)
        st = self.store.get(key)
        h = id_hash(e.event_id)
        created = st is None
        if st is None:
            st = WindowState(len(rule.requires))
        elif h in st.ids:
            return True
        obs.matched.append(rule.id)
        for i, req in enumerate(rule.requires):
            if req.where is not None and not req.where(ee):
                continue
            if req.kind == "count":
                st.req_counts[i] += 1
                continue
            seen = st.distinct[i]
            if seen is None:
                seen = st.distinct[i] = set()
            order = st.distinct_order[i] if st.distinct_order is not None else None
            sketch = st.value_sketches[i]
            for v in self._values[(rule.id, i)](ee):
                vh = id_hash(v)
                if sketch is not None:
                    sketch.update(vh)
                elif vh not in seen:
                    if len(seen) >= MAX_EXACT:  # beyond exact counting: estimate
                        sketch = st.value_sketches[i] = new_sketch(seen)
                        sketch.update(vh)
                        st.estimated = True
                        continue
                    seen.add(vh)
                    if order is not None:
                        order.append(vh)
        # Every counted id is kept (up to MAX_EXACT; beyond, a sketch counts): a redelivery
        # must add nothing whatever its other fields (a redelivered enrolment re-sent as an
        # identification must not complete FR-007).
        if st.id_sketch is not None:
            st.id_sketch.update(h)
            st.count = max(round(st.id_sketch.get_estimate()), len(st.ids))
        elif len(st.ids) < MAX_IDS_PER_WINDOW:
            st.count += 1
            st.ids.add(h)
            if st.id_order is not None:
                st.id_order.append(h)
        else:
            st.id_sketch = new_sketch(st.ids)
            st.id_sketch.update(h)
            st.estimated = True
            st.count = max(round(st.id_sketch.get_estimate()), len(st.ids))
        if len(st.samples) < MAX_SAMPLES:
            st.samples.append(evidence_sample(ee))
        progress = st.alert
        if progress is None:
            if _satisfied(rule, st):
                m0 = max(magnitude(rule, st), 1)
                st.alert = AlertProgress(0, "open", m0, m0 * 10, account_snapshot(ee))
                obs.alerts.append(self._revision(rule, gk, start, st))
                self.store.put(key, st)
                if created:
                    self.lifecycle.created(key)
                self.lifecycle.fired(key)
                return False
        elif progress.status == "closed":
            progress.changed_after_close = True  # one more `closed` when dropped
        else:
            m = magnitude(rule, st)
            if m >= progress.next_update:
                while progress.next_update <= m:
                    progress.next_update *= 10
                progress.revision += 1
                progress.status = "update"
                obs.updates.append(self._revision(rule, gk, start, st))
        self.store.put(key, st)
        if created:
            self.lifecycle.created(key)
        return False

    def _revision(self, rule: Rule, gk: str, start: int, st: WindowState) -> Alert:
        progress = st.alert
        assert progress is not None
        dreq = rule.distinct_requirement
        distinct = None
        if dreq is not None:
            distinct = st.distinct_count(rule.requires.index(dreq))
        return Alert(
            alert_id=alert_id(rule.id, gk, start),
            rule_id=rule.id,
            title=rule.title,
            clause=rule.clause,
            severity=rule.severity,
            group_by=rule.group_by,
            group_key=gk,
            account=progress.account,
            window_start_ms=start,
            window_end_ms=start + rule.window_ms,
            count=st.count,
            distinct=distinct,
            samples=tuple(st.samples),
            rule_version=rule.version,
            rules_sha256=self.rule_set.sha256,
            status=progress.status,
            revision=progress.revision,
            related=tuple(progress.related),
            estimated=st.estimated,
        )
