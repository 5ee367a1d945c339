"""Every worker's copy of the exceptions topic (SPEC 4.4), caught up before detection starts.

Like the accounts feed: read whole at start (in the background: the detect agent waits for
`ready` before its first event; holding up the worker's start instead shifted its join to
the group by the time of the read), then followed; each valid record replaces the
exception of its id, a tombstone removes it, and the set in force is swapped between two
events. A rejected record changes nothing here: the exception-audit agent (one consumer
per partition in the group) dead-letters it once per cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from aiokafka import ConsumerRecord
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.app.topic_feed import CompactedTopicFeed
from streams.core.exceptions import ExceptionsInForce
from topics.dlq import Rejection
from topics.exceptions import ExceptionRecord, ExceptionSet, decode_exception_message

log = logging.getLogger(__name__)


class ExceptionFeed(CompactedTopicFeed):
    """Reads the compacted exceptions topic into an ExceptionsInForce; `ready` once caught up."""

    client_id = "frwatch-exceptions"
    what = "exceptions"

    def __init__(
        self,
        bootstrap: list[str],
        topic: str,
        in_force: ExceptionsInForce,
        catch_up_timeout: float = 120.0,
        client: Mapping[str, Any] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(bootstrap, topic, catch_up_timeout, client, **kwargs)
        self.in_force = in_force
        self.records: dict[str, ExceptionRecord] = {}
        self.rejected = 0
        self._changed = False
        self._catching_up: asyncio.Future[None] | None = None

    async def on_start(self) -> None:
        """Catch up in the background: only the detect agent needs the exceptions, and it
        waits for `ready` before its first event, so the worker's start is not held up."""
        self._catching_up = asyncio.ensure_future(self._catch_up())

    async def _catch_up(self) -> None:
        try:
            await super().on_start()
        except asyncio.CancelledError:
            raise
        except Exception:
            # detection would wait for the exceptions forever: the worker stops instead
            log.critical(
                "exceptions topic %s not read; stopping the worker", self.topic, exc_info=True
            )
            os.kill(os.getpid(), signal.SIGTERM)

    async def on_stop(self) -> None:
        """Stop a catch-up still running, then close the consumer."""
        if self._catching_up is not None and not self._catching_up.done():
            self._catching_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._catching_up
        await super().on_stop()

    def apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Apply a valid exception or a tombstone; a rejected record leaves everything as it was."""
        update = decode_exception_message(record.key, record.value)
        if isinstance(update, Rejection):
            self.rejected += 1
            log.warning(
                "exceptions %s[%s]@%s rejected, not applied: %s (%s): %s",
                record.topic,
                record.partition,
                record.offset,
                update.reason,
                update.field,
                update.detail,
            )
            return
        if isinstance(update, ExceptionRecord):
            self.records[update.exception_id] = update
        elif self.records.pop(update.exception_id, None) is None:
            return
        self._changed = True

    def applied(self) -> None:
        """Put the exceptions read so far in force (once per poll that changed them)."""
        if self._changed or not self.ready.is_set():
            self.in_force.replace(ExceptionSet(self.records.values()))
            self._changed = False
            log.info("exceptions in force: %d", len(self.records))


class ExceptionMetrics(Collector):
    """`frwatch_exception_hits_total{exception_id}` and `frwatch_exceptions_active` (SPEC 7),
    read from the detectors' tally and the set in force at scrape time."""

    def __init__(
        self,
        registry: CollectorRegistry,
        in_force: ExceptionsInForce,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.in_force = in_force
        self.now_ms = now_ms
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        """The two families: hits of every id seen (and at 0 for those in force), active now."""
        hits = CounterMetricFamily(
            "frwatch_exception_hits",
            "events an exception kept from a rule (SPEC 4.4)",
            labels=["exception_id"],
        )
        current = self.in_force.current
        tally = dict(self.in_force.hits)
        for x in current.exceptions:
            tally.setdefault(x.exception_id, 0)
        for exception_id in sorted(tally):
            hits.add_metric([exception_id], tally[exception_id])
        yield hits
        active = GaugeMetricFamily(
            "frwatch_exceptions_active", "exceptions in force now (wall clock)"
        )
        active.add_metric([], current.active_at(self.now_ms()))
        yield active

    def describe(self) -> Iterator[Metric]:
        """The families, so that `/metrics?name[]=...` finds them."""
        return self.collect()
