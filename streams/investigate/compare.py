"""`--compare-rules OLD`: the shadow run of a rules change (SPEC 6).

One pass over the input: the replay's detector runs the new rules, and a `ShadowRun` tap
feeds the same enriched events to a second detector under OLD. The difference is taken
per rule over alert_ids (rule, group, window), keeping each alert's latest revision.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams import __version__
from streams.core.classify import EnrichedEvent
from streams.core.engine import Detector, Observation
from streams.core.rules import RuleSet
from streams.core.state import MemoryWindowStore
from streams.investigate.alert_book import AlertBook
from topics.alerts import Alert


class ShadowRun:
    """A second detector under other rules, fed the events the replay evaluates."""

    def __init__(
        self,
        rules: RuleSet,
        live_rules: RuleSet,
        clock: Callable[[], float] = time.time,
        make_detector: Callable[[RuleSet], Detector] | None = None,
    ) -> None:
        self.rules = rules
        self.alerts = AlertBook()
        # `make_detector`: the replay's own way of building its detector (exceptions and all),
        # so that the two rule sets are the only difference between the runs
        self.detector = (
            make_detector(rules) if make_detector else Detector(rules, MemoryWindowStore())
        )
        self._clock = clock
        # the same enriched event serves both detectors unless the rules files classify
        # operations differently (their `classification` sections, SPEC 2.2)
        self._reclassify = rules.classification.canonical() != live_rules.classification.canonical()

    def observed(self, ee: EnrichedEvent, obs: Observation) -> None:
        """Count the event under the other rules too, keeping every revision it causes."""
        if self._reclassify:
            ee = EnrichedEvent(ee.event, ee.account, self.rules.classification)
        seen = self.detector.observe(ee)
        self._file(seen.alerts)
        # the alert lifecycle (SPEC 5) adds `update` revisions, and `closed` ones from expiry
        # and at the end of input; read duck-typed, so that the shadow keeps what the
        # replay's own detector emits, whichever revisions that is
        self._file(getattr(seen, "updates", ()))
        closed = self.detector.expire()
        if isinstance(closed, list):
            self._file(closed)

    def finished(self) -> None:
        """End of input: close every window that fired, as the replay does for its own."""
        close_all = getattr(self.detector, "close_all", None)
        if close_all is not None:
            self._file(close_all())

    def _file(self, alerts: Iterable[Alert]) -> None:
        for alert in alerts:
            # through the same JSON as the replay's output, so both books hold alike documents
            doc = alert.to_json("replay", int(self._clock() * 1000), __version__)
            self.alerts.add(orjson.loads(doc))


def _figures(doc: dict[str, Any]) -> dict[str, Any]:
    obs = doc.get("observed") or {}
    out = {"count": obs.get("count"), "distinct": obs.get("distinct")}
    for key in ("status", "revision"):
        if key in doc:
            out[key] = doc[key]
    return out


def _entry(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "alert_id": doc["alert_id"],
        "group_key": doc["group_key"],
        "window": doc["window"],
        **_figures(doc),
    }


@dataclass(frozen=True, slots=True)
class RuleDifference:
    """One rule's alerts under OLD and under the new rules."""

    rule_id: str
    title: str
    in_old: bool
    in_new: bool
    version_changed: bool
    only_old: list[dict[str, Any]] = field(default_factory=list)
    only_new: list[dict[str, Any]] = field(default_factory=list)
    both: list[dict[str, Any]] = field(default_factory=list)

    @property
    def differs(self) -> bool:
        """Whether the rules change adds or removes an alert of this rule."""
        return bool(self.only_old or self.only_new)

    def to_json(self) -> bytes:
        """One JSON line."""
        return orjson.dumps(
            {
                "rule_id": self.rule_id,
                "title": self.title,
                "in_old": self.in_old,
                "in_new": self.in_new,
                "version_changed": self.version_changed,
                "only_old": self.only_old,
                "only_new": self.only_new,
                "both": self.both,
            }
        )


def _sorted(docs: dict[str, dict[str, Any]], ids: set[str]) -> list[dict[str, Any]]:
    return sorted(
        (docs[i] for i in ids), key=lambda d: (d["window"]["start"], d["group_key"], d["alert_id"])
    )


def compare(
    old_rules: RuleSet, old: AlertBook, new_rules: RuleSet, new: AlertBook
) -> list[RuleDifference]:
    """Per rule of either file (new file's order, then rules only OLD has): the difference."""
    old_by = old.by_rule()
    new_by = new.by_rule()
    old_ids = {r.id: r for r in old_rules.rules}
    new_ids = {r.id: r for r in new_rules.rules}
    order = [r.id for r in new_rules.rules] + [r.id for r in old_rules.rules if r.id not in new_ids]
    # alerts of a rule no longer in either file cannot occur; rules are listed once each
    out = []
    for rid in order:
        o = old_by.get(rid, {})
        n = new_by.get(rid, {})
        rule = new_ids.get(rid) or old_ids[rid]
        in_both = set(o) & set(n)
        out.append(
            RuleDifference(
                rule_id=rid,
                title=rule.title,
                in_old=rid in old_ids,
                in_new=rid in new_ids,
                version_changed=rid in old_ids
                and rid in new_ids
                and old_ids[rid].version != new_ids[rid].version,
                only_old=[_entry(d) for d in _sorted(o, set(o) - set(n))],
                only_new=[_entry(d) for d in _sorted(n, set(n) - set(o))],
                both=[
                    {
                        "alert_id": d["alert_id"],
                        "group_key": d["group_key"],
                        "window": d["window"],
                        "old": _figures(o[d["alert_id"]]),
                        "new": _figures(d),
                    }
                    for d in _sorted(n, in_both)
                ],
            )
        )
    return out


def _figures_text(f: dict[str, Any]) -> str:
    text = f"count {f['count']}"
    if f.get("distinct") is not None:
        text += f", distinct {f['distinct']}"
    return text


def render_table(diffs: list[RuleDifference], old_name: str, new_name: str) -> Iterator[str]:
    """The comparison for a person: one row per rule, then every alert that differs."""
    yield f"alerts under OLD ({old_name}) and under the new rules ({new_name}), per rule"
    yield ""
    head = f"{'rule':<10} {'only OLD':>8} {'only new':>8} {'both':>6}  note"
    yield head
    yield "-" * len(head)
    for d in diffs:
        note = []
        if not d.in_old:
            note.append("new rule")
        elif not d.in_new:
            note.append("removed or disabled")
        elif d.version_changed:
            note.append("definition changed")
        yield (
            f"{d.rule_id:<10} {len(d.only_old):>8} {len(d.only_new):>8} {len(d.both):>6}"
            f"  {', '.join(note)}".rstrip()
        )
    total_old = sum(len(d.only_old) for d in diffs)
    total_new = sum(len(d.only_new) for d in diffs)
    yield "-" * len(head)
    yield f"{'total':<10} {total_old:>8} {total_new:>8} {sum(len(d.both) for d in diffs):>6}"
    if not total_old and not total_new:
        yield ""
        yield "no difference: both rule sets raise the same alerts"
        return
    for d in diffs:
        for label, entries in (("only under OLD", d.only_old), ("only under new", d.only_new)):
            if not entries:
                continue
            yield ""
            yield f"{d.rule_id} {label} ({len(entries)}):"
            for e in entries:
                yield (
                    f"  {e['group_key']}  {e['window']['start']} .. {e['window']['end']}"
                    f"  {_figures_text(e)}  {e['alert_id']}"
                )
