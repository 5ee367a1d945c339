"""Matching events over time per (rule, group), collected during the replay for `--report`.

Only events that a rule counted are kept, as counts per bucket (a minute for windows up to
6h, an hour beyond), so memory grows with the groups that matched, never with the input.
Buckets that no alert can still need are dropped as event time moves on: a window can fire
until the retention clock is 24h past its end (SPEC 4.1), and a picture shows one window
size either side of its window. Buckets around a fired window are kept to the end.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from streams.core.classify import EnrichedEvent
from streams.core.engine import Observation, group_key
from streams.core.rules import Rule, RuleSet

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
RETENTION_MS = 24 * HOUR_MS
#: buckets held for windows that have not fired, over all groups; beyond, new ones are not kept
MAX_OPEN_BUCKETS = 2_000_000

GroupRef = tuple[str, str]  # (rule_id, group_key)


def bucket_ms(rule: Rule) -> int:
    """The bucket of a rule's timelines: a minute, or an hour for windows beyond 6h."""
    return MINUTE_MS if rule.window_ms <= 6 * HOUR_MS else HOUR_MS


@dataclass(frozen=True, slots=True)
class Timeline:
    """Matching events of one (rule, group) per bucket over [start_ms, end_ms)."""

    bucket_ms: int
    start_ms: int
    end_ms: int
    #: (bucket start, events) for every bucket in the span, zeros included
    counts: tuple[tuple[int, int], ...]
    #: some buckets of this span were not kept (the collector's bound)
    partial: bool


class MatchTimelines:
    """A replay tap: counts of matched events per (rule, group, bucket), bounded."""

    def __init__(self, rules: RuleSet) -> None:
        self._rules = {r.id: r for r in rules.rules}
        self._bucket = {r.id: bucket_ms(r) for r in rules.rules}
        self._keep = {r.id: RETENTION_MS + 2 * r.window_ms + bucket_ms(r) for r in rules.rules}
        self._counts: dict[GroupRef, dict[int, int]] = {}
        self._pins: dict[GroupRef, list[tuple[int, int]]] = {}
        self._open_buckets = 0
        self._clock_ms = 0
        self._swept_ms = 0
        #: matched events per rule over the whole replay (exact)
        self.matched: Counter[str] = Counter()
        #: buckets not kept because of MAX_OPEN_BUCKETS
        self.dropped = 0

    def observed(self, ee: EnrichedEvent, obs: Observation) -> None:
        """Count the event for each rule that counted it; pin the spans of fired windows."""
        ts = ee.event.ts_ms
        if ts > self._clock_ms:
            self._clock_ms = ts
        if not obs.matched:
            return
        for rid in obs.matched:
            rule = self._rules.get(rid)
            if rule is None:
                continue
            gk = group_key(rule, ee)
            if gk is None:
                continue
            self.matched[rid] += 1
            ref = (rid, gk)
            buckets = self._counts.get(ref)
            if buckets is None:
                buckets = self._counts[ref] = {}
            b = ts - ts % self._bucket[rid]
            n = buckets.get(b)
            if n is None:
                if self._open_buckets >= MAX_OPEN_BUCKETS and not self._pinned(ref, b):
                    self.dropped += 1
                    continue
                self._open_buckets += 1
                n = 0
            buckets[b] = n + 1
        for alert in obs.alerts:
            size = alert.window_end_ms - alert.window_start_ms
            span = (alert.window_start_ms - size, alert.window_end_ms + size)
            pins = self._pins.setdefault((alert.rule_id, alert.group_key), [])
            if span not in pins:
                pins.append(span)
        if self._clock_ms - self._swept_ms >= HOUR_MS:
            self._sweep()

    def finished(self) -> None:
        """End of input: nothing to flush."""

    def _pinned(self, ref: GroupRef, b: int) -> bool:
        return any(lo <= b < hi for lo, hi in self._pins.get(ref, ()))

    def _sweep(self) -> None:
        """Forget buckets that no window still in retention, nor any fired window, needs."""
        self._swept_ms = self._clock_ms
        for ref in list(self._counts):
            horizon = self._clock_ms - self._keep[ref[0]]
            buckets = self._counts[ref]
            old = [b for b in buckets if b < horizon and not self._pinned(ref, b)]
            for b in old:
                del buckets[b]
            self._open_buckets -= len(old)
            if not buckets:
                del self._counts[ref]

    def around(
        self, rule_id: str, group: str, window_start_ms: int, window_end_ms: int
    ) -> Timeline:
        """The timeline of one window, with one window size either side."""
        size = window_end_ms - window_start_ms
        step = self._bucket.get(rule_id, MINUTE_MS if size <= 6 * HOUR_MS else HOUR_MS)
        lo = window_start_ms - size
        lo -= lo % step
        hi = window_end_ms + size
        buckets = self._counts.get((rule_id, group), {})
        counts = tuple((b, buckets.get(b, 0)) for b in range(lo, hi, step))
        return Timeline(step, lo, hi, counts, partial=self.dropped > 0)
