"""Faust's Prometheus sensors under a fixed prefix, with the per-message hooks made cheap.

Faust's PrometheusMonitor updates labelled prometheus_client metrics (a lock and a label
lookup each) four times per message; that alone cost more than our validation and routing.
This monitor keeps plain tallies on the hot path and moves them into the same metrics when
/metrics is scraped. Rebalance, commit, send and assignment hooks are Faust's own.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import faust
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class LeanPrometheusMonitor(PrometheusMonitor):  # type: ignore[misc]
    """PrometheusMonitor whose per-message hooks only count; `flush` publishes the counts."""

    def __init__(self, metrics: FaustMetrics, **kwargs: Any) -> None:
        super().__init__(metrics, **kwargs)
        self._received: Counter[str] = Counter()
        self._last_offset: dict[TP, int] = {}
        self._end_offset: dict[TP, int] = {}
        self._events = 0

    def on_message_in(self, tp: TP, offset: int, message: Any) -> None:
        """Count a received message."""
        self._received[tp.topic] += 1
        self._last_offset[tp] = offset

    def on_stream_event_in(self, tp: TP, offset: int, stream: Any, event: Any) -> None:
        """Count an event handed to a stream."""
        self._events += 1

    def on_stream_event_out(
        self, tp: TP, offset: int, stream: Any, event: Any, state: Any = None
    ) -> None:
        """Nothing per event (no per-event runtime histogram)."""

    def on_message_out(self, tp: TP, offset: int, message: Any) -> None:
        """Nothing per message."""

    def track_tp_end_offset(self, tp: TP, offset: int) -> None:
        """Remember the partition's end offset (consumer lag = end - committed)."""
        self._end_offset[tp] = offset

    def flush(self) -> None:
        """Move the tallies into Faust's metrics (called before each scrape)."""
        m = self._metrics
        for topic, n in self._received.items():
            m.messages_received.inc(n)
            m.messages_received_per_topics.labels(topic=topic).inc(n)
        self._received.clear()
        for tp, offset in self._last_offset.items():
            m.messages_received_per_topics_partition.labels(
                topic=tp.topic, partition=tp.partition
            ).set(offset)
        for tp, offset in self._end_offset.items():
            m.topic_partition_end_offset.labels(topic=tp.topic, partition=tp.partition).set(offset)
        if self._events:
            m.total_events.inc(self._events)
            self._events = 0


def install_metrics_endpoint(
    app: faust.App, registry: CollectorRegistry, prefix: str
) -> LeanPrometheusMonitor:
    """Faust's sensors under `prefix` plus everything in `registry`, served at /metrics."""
    monitor = LeanPrometheusMonitor(metrics=FaustMetrics.create(registry, prefix))
    app.monitor = monitor

    @app.page("/metrics")
    async def metrics_page(self: Any, request: Any) -> Any:
        monitor.flush()
        # `?name[]=a&name[]=b` keeps only those series, as prometheus_client's own handlers
        # do: a probe that polls one counter does not render every family each time
        names = request.query.getall("name[]", [])
        source = registry.restricted_registry(names) if names else registry
        # the content type goes in the headers: aiohttp refuses a charset in content_type
        return self.bytes(generate_latest(source), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return monitor
