"""SPEC 7 metrics on a per-app registry; no label carries a customer value.

Agents add counts per message or batch (not per record) so metrics stay off the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# event lag spans milliseconds (live) to hours (backlog, replayed archives)
EVENT_LAG_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
    1800,
    3600,
    7200,
    21600,
    86400,
)
# alert latency: milliseconds to seconds; the SLO line is 0.25 s, the page at 5 s
ALERT_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30)

RESULTS = ("processed", "malformed", "rejected", "duplicate", "error")
FAUST_PREFIX = "frwatch_faust"


class _WindowStateCollector(Collector):
    """`frwatch_window_state_entries{rule_id}` computed at scrape time from the live store."""

    def __init__(self, source: Callable[[], dict[str, int]], rule_ids: Iterable[str]) -> None:
        self.source = source
        self.rule_ids = tuple(rule_ids)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        fam = GaugeMetricFamily(
            "frwatch_window_state_entries",
            "(rule, group, window) states held by this worker",
            labels=["rule_id"],
        )
        counts = self.source()
        for rid in sorted(set(self.rule_ids) | set(counts)):
            fam.add_metric([rid], counts.get(rid, 0))
        yield fam


class DetectorMetrics:
    """The frwatch_* metrics of SPEC 7."""

    def __init__(
        self, registry: CollectorRegistry, rule_ids: Iterable[str], severities: dict[str, str]
    ) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series: they double the scrape for nothing
        self.registry = registry
        self.rule_ids = tuple(rule_ids)
        self.events = Counter(
            "frwatch_events", "input records by result", ["result"], registry=registry
        )
        self.rule_matches = Counter(
            "frwatch_rule_matches",
            "non-duplicate events that matched the rule",
            ["rule_id"],
            registry=registry,
        )
        self.alerts = Counter(
            "frwatch_alerts", "alerts emitted", ["rule_id", "severity"], registry=registry
        )
        self.enrichment = Counter(
            "frwatch_enrichment", "account lookups per record", ["result"], registry=registry
        )
        self.event_lag = Histogram(
            "frwatch_event_lag_seconds",
            "wall clock minus event time at processing",
            buckets=EVENT_LAG_BUCKETS,
            registry=registry,
        )
        self.alert_latency = Histogram(
            "frwatch_alert_latency_seconds",
            "alert acknowledged by Kafka minus the Kafka timestamp of the firing event's message",
            buckets=ALERT_LATENCY_BUCKETS,
            registry=registry,
        )
        self.accounts_loaded = Gauge(
            "frwatch_accounts_loaded", "accounts currently known", registry=registry
        )
        # pre-create every label value so dashboards see zeros, not gaps
        for r in RESULTS:
            self.events.labels(r)
        for r in ("hit", "miss"):
            self.enrichment.labels(r)
        for rid in self.rule_ids:
            self.rule_matches.labels(rid)
            self.alerts.labels(rid, severities[rid])
        self._events = {r: self.events.labels(r) for r in RESULTS}
        self._hit = self.enrichment.labels("hit")
        self._miss = self.enrichment.labels("miss")

    def watch_window_states(self, source: Callable[[], dict[str, int]]) -> None:
        """Serve the window-state gauge from `source` at scrape time."""
        self.registry.register(_WindowStateCollector(source, self.rule_ids))

    def count_results(self, counts: dict[str, int]) -> None:
        """Add a message's per-result record counts."""
        for result, n in counts.items():
            if n:
                self._events[result].inc(n)

    def count_enrichment(self, hits: int, misses: int) -> None:
        """Add a message's enrichment hits and misses."""
        if hits:
            self._hit.inc(hits)
        if misses:
            self._miss.inc(misses)
