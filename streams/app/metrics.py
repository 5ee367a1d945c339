"""SPEC 7 metrics on a per-app registry; no label carries a customer value.

The per-record metrics (event results, enrichment, rule matches, alerts, event lag) are plain
integers bumped on the hot path and turned into Prometheus families only when scraped: a
prometheus_client Counter or Histogram takes a lock on every call, which costs more than the
rest of the per-record work.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from streams.app.detection import Detected
from streams.app.routing import Routed
from topics.alerts import STATUSES

# event lag spans milliseconds (live) to hours (backlog, replayed archives)
EVENT_LAG_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    21600.0,
    86400.0,
)
# the bounds in milliseconds: a lag is a difference of epoch milliseconds, so `lag_ms <= bound_ms`
# is exactly `lag_ms / 1000 <= bound` (every bound is a whole number of milliseconds)
_LAG_BOUNDS_MS = tuple(round(b * 1000) for b in EVENT_LAG_BUCKETS)
# alert latency: milliseconds to seconds; the SLO line is 0.25 s, the page at 5 s
ALERT_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

RESULTS = ("processed", "malformed", "rejected", "duplicate", "error", "skipped")
FAUST_PREFIX = "frwatch_faust"


class DetectorMetrics(Collector):
    """The frwatch_* metrics of SPEC 7."""

    def __init__(
        self, registry: CollectorRegistry, rule_ids: Iterable[str], severities: dict[str, str]
    ) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series
        self.registry = registry
        self.rule_ids = tuple(rule_ids)
        self.severities = dict(severities)
        # pre-filled so that dashboards see zeros, not gaps
        self.events = dict.fromkeys(RESULTS, 0)
        self.enrichment = {"hit": 0, "miss": 0}
        self.rule_matches = dict.fromkeys(self.rule_ids, 0)
        self.alerts = dict.fromkeys(self.rule_ids, 0)
        self.revisions = dict.fromkeys(STATUSES, 0)
        self._lag_counts = [0] * (len(EVENT_LAG_BUCKETS) + 1)
        self._lag_sum_ms = 0
        self._window_states: Callable[[], dict[str, int]] = dict
        self.alert_latency = Histogram(
            "frwatch_alert_latency_seconds",
            "alert acknowledged by Kafka minus the Kafka timestamp of the firing event's message",
            buckets=ALERT_LATENCY_BUCKETS,
            registry=registry,
        )
        self.accounts_loaded = Gauge(
            "frwatch_accounts_loaded", "accounts currently known", registry=registry
        )
        self.watermark_lag = Gauge(
            "frwatch_watermark_lag_seconds",
            "wall clock minus the retention clock (the low watermark of the input, SPEC 4.1)",
            registry=registry,
        )
        self._rules_sha256 = ""
        self._rules_changes: Callable[[], dict[str, int]] = lambda: {"applied": 0, "refused": 0}
        registry.register(self)

    def set_rules(self, rule_ids: Iterable[str], severities: dict[str, str], sha256: str) -> None:
        """The rules now in force: their ids get series (at 0 when new), the info gauge moves."""
        self.severities.update(severities)
        for rule_id in rule_ids:
            self.rule_matches.setdefault(rule_id, 0)
            self.alerts.setdefault(rule_id, 0)
        self.rule_ids = tuple(dict.fromkeys((*self.rule_ids, *rule_ids)))
        self._rules_sha256 = sha256

    def watch_rules_changes(self, source: Callable[[], dict[str, int]]) -> None:
        """Serve `frwatch_rules_changes_total` from `source` (applied, refused) at scrape time."""
        self._rules_changes = source

    def watch_retention_clock(self, clock_ms: Callable[[], int], now_ms: Callable[[], int]) -> None:
        """Serve `frwatch_watermark_lag_seconds` at scrape time (0 until a clock is known)."""

        def lag() -> float:
            clock = clock_ms()
            return max(0.0, (now_ms() - clock) / 1000) if clock > 0 else 0.0

        self.watermark_lag.set_function(lag)

    def watch_window_states(self, source: Callable[[], dict[str, int]]) -> None:
        """Serve `frwatch_window_state_entries` from `source` at scrape time."""
        self._window_states = source

    def count_results(self, counts: dict[str, int]) -> None:
        """Add a message's per-result record counts."""
        events = self.events
        for result, n in counts.items():
            events[result] += n

    def count_enrichment(self, hits: int, misses: int) -> None:
        """Add a message's enrichment hits and misses."""
        self.enrichment["hit"] += hits
        self.enrichment["miss"] += misses

    def count_routed(self, routed: Routed) -> None:
        """What stage 1 made of one input message: results, enrichment, event lags."""
        events = self.events
        events["processed"] += routed.processed
        events["malformed"] += routed.malformed
        events["rejected"] += routed.rejected
        events["error"] += routed.error
        events["skipped"] += routed.skipped
        self.count_enrichment(routed.hits, routed.misses)
        self.observe_lags(routed.event_ts_ms, routed.now_ms)

    def count_detected(self, detected: Detected) -> None:
        """What stage 2 made of one message: results and rule matches."""
        events = self.events
        events["processed"] += detected.processed
        events["duplicate"] += detected.duplicate
        events["error"] += detected.error
        matches = self.rule_matches
        for rule_id, n in detected.matches.items():
            matches[rule_id] = matches.get(rule_id, 0) + n

    def count_alert(self, rule_id: str, latency_s: float) -> None:
        """One alert acknowledged by Kafka."""
        self.alerts[rule_id] = self.alerts.get(rule_id, 0) + 1
        self.alert_latency.observe(latency_s)

    def count_revisions(self, statuses: Iterable[str]) -> None:
        """Alert revisions acknowledged by Kafka (open, update, closed: SPEC 5)."""
        revisions = self.revisions
        for status in statuses:
            revisions[status] += 1

    def observe_lags(self, event_ts_ms: Sequence[int], now_ms: int) -> None:
        """Add the lags of events (`now_ms` minus their time, 0 when ahead) to the histogram.

        The events of one message mostly share a bucket: when the oldest and the newest do,
        so do all. Otherwise, sorted, the events with lag <= a bound are a suffix, found by
        bisection for the bounds between the extremes.
        """
        n = len(event_ts_ms)
        if not n:
            return
        oldest, newest = min(event_ts_ms), max(event_ts_ms)
        bounds, counts = _LAG_BOUNDS_MS, self._lag_counts
        first = bisect_left(bounds, now_ms - newest)  # the smallest lag's bucket
        # the largest's (len(bounds): +Inf)
        last = first if oldest == newest else bisect_left(bounds, now_ms - oldest)
        if newest <= now_ms:
            self._lag_sum_ms += n * now_ms - sum(event_ts_ms)
        else:  # events ahead of the clock count as lag 0
            self._lag_sum_ms += sum(now_ms - ts for ts in event_ts_ms if ts < now_ms)
        if first == last:
            counts[first] += n
            return
        ordered = sorted(event_ts_ms)
        within = 0  # events with lag <= the bound before bucket i
        for i in range(first, last):
            upto = n - bisect_left(ordered, now_ms - bounds[i])
            counts[i] += upto - within
            within = upto
        counts[last] += n - within

    def collect(self) -> Iterator[Metric]:
        """Families for the tallies, built at scrape time."""
        yield _counter("frwatch_events", "input records by result", "result", self.events)
        yield _counter(
            "frwatch_rule_matches",
            "non-duplicate events that matched the rule",
            "rule_id",
            self.rule_matches,
        )
        alerts = CounterMetricFamily(
            "frwatch_alerts", "alerts emitted", labels=["rule_id", "severity"]
        )
        for rule_id, n in self.alerts.items():
            alerts.add_metric([rule_id, self.severities.get(rule_id, "unknown")], n)
        yield alerts
        yield _counter(
            "frwatch_alert_revisions",
            "alert revisions emitted (SPEC 5 lifecycle)",
            "status",
            self.revisions,
        )
        yield _counter(
            "frwatch_enrichment", "account lookups per record", "result", self.enrichment
        )
        buckets, running = [], 0
        for bound, n in zip((*EVENT_LAG_BUCKETS, float("inf")), self._lag_counts, strict=True):
            running += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        yield HistogramMetricFamily(
            "frwatch_event_lag_seconds",
            "wall clock minus event time at processing",
            buckets=buckets,
            sum_value=self._lag_sum_ms / 1000,
        )
        states = GaugeMetricFamily(
            "frwatch_window_state_entries",
            "(rule, group, window) states held by this worker",
            labels=["rule_id"],
        )
        counts = self._window_states()
        for rule_id in sorted(set(self.rule_ids) | set(counts)):
            states.add_metric([rule_id], counts.get(rule_id, 0))
        yield states
        info = GaugeMetricFamily(
            "frwatch_rules_info", "the rules in force (1)", labels=["rules_sha256"]
        )
        if self._rules_sha256:
            info.add_metric([self._rules_sha256], 1)
        yield info
        yield _counter(
            "frwatch_rules_changes",
            "new rules versions applied or refused (SPEC 4.3)",
            "result",
            self._rules_changes(),
        )

    def describe(self) -> Iterator[Metric]:
        """The families (their current values do not matter): the registry learns the names,
        so duplicates are refused and `restricted_registry` (`/metrics?name[]=...`) finds them."""
        return self.collect()


def _counter(name: str, doc: str, label: str, tallies: dict[str, int]) -> CounterMetricFamily:
    """A counter family with one label, a sample per tally."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, n in tallies.items():
        family.add_metric([value], n)
    return family
