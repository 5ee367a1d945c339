"""Checked delivery: every write acknowledged by Kafka, in call order, or the worker stops.

One idempotent producer (acks=all) at a time. `Delivery.send` queues a record and returns
a future that resolves with its RecordMetadata once Kafka acknowledged it; futures
resolve in call order. A producer that cannot go on (out-of-order sequence or unknown
producer id after a broker restart, a fenced epoch, a dead sender task, or no
acknowledgement for `stall_s`) is closed and replaced, and every record not yet
acknowledged is sent again through the new one in the original order: the same
producer's sequence numbers never match again (issue 14, item 1; aiokafka 0.14 fails a
batch that waited request_timeout_ms for a leader after numbering it, which is what a
broker down for 40 s does). A broker that is down
or slow is waited out by the producer itself, which retries without duplicates. A write
that Kafka refuses for good (size, authorisation, invalid topic, unsupported version)
stops the service (SPEC 2.3, 6.1): `on_fatal(topic, exc)` once, one
`frwatch_delivery_failures_total{topic}`, and no future resolves successfully after it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    InvalidRequiredAcksError,
    InvalidTopicError,
    MessageSizeTooLargeError,
    PolicyViolationError,
    RecordTooLargeError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnsupportedVersionError,
)
from mode import Service
from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger(__name__)

# refusals that no retry can fix: the record (or this client) is wrong for the cluster
PERMANENT: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    CorruptRecordException,  # also the broker's answer to a record over max.message.bytes
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    SaslAuthenticationFailed,
    InvalidTopicError,
    InvalidRequiredAcksError,
    PolicyViolationError,
    UnsupportedVersionError,
)
FAILURES_METRIC = "frwatch_delivery_failures_total"


def is_permanent(exc: BaseException) -> bool:
    """Kafka refused the write for good (anything else is waited out and retried)."""
    if isinstance(exc, PERMANENT):
        return True
    # a bug in the caller (a value that is not bytes, a partition the topic lacks) fails
    # the same way every time
    return isinstance(exc, TypeError | ValueError | AssertionError)


def delivery_failures_counter(registry: CollectorRegistry) -> Counter:
    """SPEC 7 `frwatch_delivery_failures_total{topic}` on the caller's registry."""
    return Counter(
        FAILURES_METRIC,
        "Writes Kafka refused for good (the worker stops)",
        ["topic"],
        registry=registry,
    )


class DeliveryStopped(Exception):
    """The record was not delivered: the service stopped, or an earlier write was refused."""


class RecordMetadataLike(Protocol):
    """What aiokafka's RecordMetadata carries that callers use."""

    topic: str
    partition: int
    offset: int


class ProducerLike(Protocol):
    """The part of AIOKafkaProducer the service uses (tests pass a stand-in)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Any]: ...


@dataclass(eq=False)
class _Record:
    topic: str
    value: bytes | None
    key: bytes | None
    partition: int | None
    future: asyncio.Future[Any]
    acked: Any = None  # RecordMetadata once Kafka acknowledged it (through any producer)
    sent_at: float | None = None  # monotonic time it was handed to the current producer


class Delivery(Service):  # type: ignore[misc]
    """Sends records through one idempotent producer; futures resolve once Kafka has them."""

    def __init__(
        self,
        bootstrap: list[str] | str,
        *,
        on_fatal: Callable[[str, BaseException], None],
        failures: Counter | Callable[[str], None],
        client_id: str = "frwatch-delivery",
        producer_config: dict[str, Any] | None = None,
        producer_factory: Callable[[], ProducerLike] | None = None,
        flush_timeout_s: float = 10.0,
        close_timeout_s: float = 5.0,
        stall_s: float = 120.0,
        backoff_s: tuple[float, float] = (0.2, 5.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bootstrap = bootstrap
        self.client_id = client_id
        self._config = dict(producer_config or {})
        self._factory = producer_factory or self._new_producer
        self._on_fatal = on_fatal
        self._failures = failures
        self.flush_timeout_s = flush_timeout_s
        self.close_timeout_s = close_timeout_s
        self.stall_s = stall_s
        self._backoff = backoff_s
        # every record not yet resolved, in call order; the first `_sent` were handed to
        # the current producer (or acknowledged through an earlier one)
        self._records: collections.deque[_Record] = collections.deque()
        self._sent = 0
        self._producer: ProducerLike | None = None
        self._starting: ProducerLike | None = None
        self._generation = 0  # bumped whenever the producer is replaced
        self._replace = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._pump: asyncio.Task[None] | None = None
        self.refusal: tuple[str, BaseException] | None = None
        self._closing = False
        self._acks_seen = False
        self.producers_started = 0  # for tests and logs: how often a producer was (re)made

    # -- the caller's side ----------------------------------------------------------

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Any]:
        """Queue a record; the future resolves with its RecordMetadata once Kafka has it.

        Futures resolve in call order. After a permanent refusal, or once stopping, the
        future fails with DeliveryStopped (the refused record's with Kafka's error).
        """
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.refusal is not None or self._closing:
            fut.set_exception(DeliveryStopped(self._why_stopped()))
            return fut
        self._records.append(_Record(topic, value, key, partition, fut))
        self._idle.clear()
        self._wake.set()
        return fut

    @property
    def unresolved(self) -> int:
        """Records queued whose futures have not resolved yet."""
        return len(self._records)

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every record queued so far is resolved; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    # -- service ------------------------------------------------------------------

    async def on_start(self) -> None:
        """Start sending in the background (a broker that is down does not block start)."""
        self._pump = asyncio.ensure_future(self._run())

    async def on_stop(self) -> None:
        """Flush for at most flush_timeout_s, then close; what is left fails with DeliveryStopped."""
        if self._records and self.refusal is None and not await self.flush(self.flush_timeout_s):
            log.warning(
                "delivery: %d records not acknowledged within %.1fs of stopping; "
                "their inputs stay uncommitted",
                len(self._records),
                self.flush_timeout_s,
            )
        self._closing = True
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._pump), self.close_timeout_s)
            self._pump = None
        for producer in (self._producer, self._starting):
            if producer is not None:
                await self._close(producer)
        self._producer = self._starting = None
        self._fail_all(DeliveryStopped(self._why_stopped()))

    # -- the pump -----------------------------------------------------------------

    def _new_producer(self) -> ProducerLike:
        config: dict[str, Any] = {"linger_ms": 5, "request_timeout_ms": 30000, **self._config}
        producer: ProducerLike = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=True,
            **config,
        )
        return producer

    async def _run(self) -> None:
        try:
            await self._pump_records()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave the caller waiting forever
            log.exception("delivery: the sending task failed")
            self._refuse(self._records[0] if self._records else None, exc)

    async def _pump_records(self) -> None:
        lo, hi = self._backoff
        renew_delay = enqueue_delay = lo
        while self.refusal is None and not self._closing:
            if self._replace or self._producer is None:
                if self._producer is not None:
                    await asyncio.sleep(renew_delay)  # a producer that fails at once, again
                    renew_delay = min(renew_delay * 2, hi)
                if not await self._renew():
                    await asyncio.sleep(renew_delay)
                    renew_delay = min(renew_delay * 2, hi)
                    continue
            if self._acks_seen:
                self._acks_seen = False
                renew_delay = lo
            producer = self._producer
            assert producer is not None
            generation = self._generation
            while self._sent < len(self._records) and not self._replace:
                rec = self._records[self._sent]
                if rec.acked is None:
                    try:
                        kfut = await producer.send(rec.topic, rec.value, rec.key, rec.partition)
                    except Exception as exc:
                        if is_permanent(exc):
                            self._refuse(rec, exc)
                            return
                        log.warning(
                            "delivery: cannot queue a record for %s (%r); retrying in %.1fs",
                            rec.topic,
                            exc,
                            enqueue_delay,
                        )
                        await asyncio.sleep(enqueue_delay)
                        enqueue_delay = min(enqueue_delay * 2, hi)
                        break
                    enqueue_delay = lo
                    rec.sent_at = time.monotonic()
                    kfut.add_done_callback(functools.partial(self._on_ack, rec, generation))
                self._sent += 1
            else:
                if not self._replace:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), 1.0)
                    self._check_stall(producer)

    async def _renew(self) -> bool:
        """Close the producer (if any) and start a new one; False if it could not start."""
        old, self._producer = self._producer, None
        self._generation += 1  # acknowledgements still count, failures of the old one do not
        if old is not None:
            await self._close(old)
        # everything not acknowledged goes again, from the first, in the original order
        self._sent = 0
        for rec in self._records:
            rec.sent_at = None
        self._replace = False
        producer = self._factory()
        self._starting = producer  # closed by on_stop if the start is cut short
        try:
            await asyncio.wait_for(producer.start(), self.close_timeout_s + 10.0)
        except Exception as exc:
            self._starting = None
            log.warning("delivery: producer cannot start (%r); retrying", exc)
            await self._close(producer)
            if is_permanent(exc):
                self._refuse(self._records[0] if self._records else None, exc)
            return False
        self._producer, self._starting = producer, None
        self.producers_started += 1
        if self.producers_started > 1:
            log.warning(
                "delivery: new producer started; resending %d unacknowledged records in order",
                sum(1 for r in self._records if r.acked is None),
            )
        self._wake.set()
        return True

    def _on_ack(self, rec: _Record, generation: int, kfut: asyncio.Future[Any]) -> None:
        if kfut.cancelled():
            exc: BaseException | None = asyncio.CancelledError()
        else:
            exc = kfut.exception()
        if exc is None:
            if rec.acked is None:
                rec.acked = kfut.result()
            self._settle()
            return
        if generation != self._generation or self.refusal is not None:
            return  # a producer already replaced: its record goes again through the new one
        if is_permanent(exc):
            self._refuse(rec, exc)
            return
        if not self._replace:
            log.warning("delivery: write to %s failed (%r); replacing the producer", rec.topic, exc)
            self._replace = True
            self._wake.set()

    def _settle(self) -> None:
        records = self._records
        self._acks_seen = True
        while records and records[0].acked is not None:
            rec = records.popleft()
            if self._sent:  # the head is in the handed-over prefix unless a renewal reset it
                self._sent -= 1
            if not rec.future.done():
                rec.future.set_result(rec.acked)
        if not records:
            self._idle.set()

    def _check_stall(self, producer: ProducerLike) -> None:
        sender = getattr(producer, "_sender", None)
        task = getattr(sender, "sender_task", None)
        if task is not None and task.done():
            log.warning("delivery: the producer's sender task ended; replacing the producer")
            self._replace = True
            return
        oldest = next((r.sent_at for r in self._records if r.acked is None), None)
        if oldest is not None and time.monotonic() - oldest > self.stall_s:
            log.warning(
                "delivery: no acknowledgement for %.0fs; replacing the producer", self.stall_s
            )
            self._replace = True

    def _refuse(self, rec: _Record | None, exc: BaseException) -> None:
        if self.refusal is not None:
            return
        topic = rec.topic if rec is not None else "?"
        self.refusal = (topic, exc)
        log.error("delivery: Kafka refused a write to %s for good: %r; stopping", topic, exc)
        if isinstance(self._failures, Counter):
            self._failures.labels(topic=topic).inc()
        else:
            self._failures(topic)
        if rec is not None and not rec.future.done():
            rec.future.set_exception(exc)
        self._fail_all(DeliveryStopped(self._why_stopped()))
        self._wake.set()
        self._on_fatal(topic, exc)

    def _fail_all(self, exc: BaseException) -> None:
        records, self._records = self._records, collections.deque()
        self._sent = 0
        for rec in records:
            if not rec.future.done():
                rec.future.set_exception(exc)
        self._idle.set()

    def _why_stopped(self) -> str:
        if self.refusal is not None:
            topic, exc = self.refusal
            return f"delivery stopped: a write to {topic} was refused ({type(exc).__name__})"
        return "delivery stopped before Kafka acknowledged the record"

    async def _close(self, producer: ProducerLike) -> None:
        """Close within close_timeout_s, cutting the connections if a flush cannot finish."""
        try:
            await asyncio.wait_for(producer.stop(), self.close_timeout_s)
            return
        except Exception as exc:
            log.warning("delivery: producer did not close cleanly (%r); dropping it", exc)
        # aiokafka's stop() waits for a flush that cannot end while the broker is away
        sender = getattr(producer, "_sender", None)
        task = getattr(sender, "sender_task", None)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=1.0)
        client = getattr(producer, "client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 1.0)
