"""`frwatch publish`: every archive line is acknowledged by Kafka, refused and named, or named
as the first line not sent when publish gives up (SPEC 6; issue 14, item 6).

One idempotent producer (acks=all) at a time, at most WINDOW messages unacknowledged.
Every send's delivery result is checked. A producer that fails a write it could retry
(a broker restart breaks its sequence numbers, a batch that waited too long for a leader)
is closed and replaced, and every message not acknowledged goes again through the new one,
in file order. A broker that is away is waited out for `give_up_s` without an
acknowledgement; then publish stops and says how far it got, so that `--from-line`
resumes exactly there. A message that Kafka refuses for its size is sent again on its own
(the producer may have batched valid lines with it, and the broker refuses a batch whole);
refused alone, its line is reported and the lines around it still go.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from streams.app.delivery import is_permanent
from streams.cli.publish_feed import MessageSource
from streams.cli.publish_lines import LineLedger, Outgoing
from streams.cli.publish_resume import digest, line_header

# the broker's answers to a record or batch over its message.max.bytes
SIZE_REFUSALS: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
)
WINDOW = 20_000  # messages sent and not yet acknowledged
WINDOW_BYTES = 64 << 20
BATCH_BYTES = 1 << 20  # the producer's batch size; a larger message is sent on its own
MAX_REQUEST_BYTES = 64 << 20  # the broker, not the client, decides what is too large
SEND_WAIT_S = 1.0  # a send that cannot queue (the producer's buffer is full) is tried again

UNSENT, INFLIGHT, ACKED, REFUSED = range(4)


@dataclass(eq=False, slots=True)
class _Slot:
    msg: Outgoing
    isolate: bool
    state: int = UNSENT
    generation: int = -1


@dataclass
class PublishOutcome:
    """How a publish ended: `error` is None when every line was acknowledged or refused."""

    messages: int = 0
    error: str | None = None
    cause: BaseException | None = None  # Kafka's refusal, when it refused for good


def is_size_refusal(exc: BaseException) -> bool:
    """Kafka refused the message (or the batch it was in) for its size."""
    return isinstance(exc, SIZE_REFUSALS)


def new_producer(bootstrap: list[str], kwargs: dict[str, Any]) -> PublishProducer:
    """The idempotent producer publish sends through."""
    producer: PublishProducer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=BATCH_BYTES,
        max_request_size=MAX_REQUEST_BYTES,
        client_id="frwatch-publish",
        **kwargs,
    )
    return producer


class PublishProducer(Protocol):
    """The part of AIOKafkaProducer publish uses (tests may pass a stand-in)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]: ...


class LinePublisher:
    """Sends `Outgoing` messages in order and settles each in the ledger (see module doc)."""

    def __init__(
        self,
        topic: str,
        ledger: LineLedger,
        producer_factory: Callable[[], PublishProducer],
        *,
        give_up_s: float,
        on_refused: Callable[[Outgoing, BaseException], None],
        progress: Callable[[], None] = lambda: None,
        close_timeout_s: float = 5.0,
        backoff_s: tuple[float, float] = (0.2, 2.0),
        clock: Callable[[], float] = time.monotonic,
        already: dict[int, bytes] | None = None,
    ) -> None:
        self.topic = topic
        self.already = already or {}  # line -> digest, left on the topic by the last run
        self.already_there = 0
        self.ledger = ledger
        self._factory = producer_factory
        self.give_up_s = give_up_s
        self._on_refused = on_refused
        self._progress = progress
        self.close_timeout_s = close_timeout_s
        self._backoff = backoff_s
        self._clock = clock
        self._window: collections.deque[_Slot] = collections.deque()
        self._window_bytes = 0
        self._cursor = 0  # the next slot to hand to the producer
        self._inflight = 0  # slots of the current generation awaiting their result
        self._alone: _Slot | None = None  # a slot sent on its own, until it has its result
        self._generation = 0
        self._renew = True
        self._fatal: BaseException | None = None
        self._last_error: BaseException | None = None
        self._wake = asyncio.Event()
        self._last_progress = clock()
        self.acked = 0
        self.producers_started = 0

    def wake(self) -> None:
        """Something to do (a result, or input that arrived)."""
        self._wake.set()

    async def run(self, source: MessageSource) -> PublishOutcome:
        """Send everything `source` yields; returns when all is settled or publish gave up."""
        producer: PublishProducer | None = None
        exhausted = False
        delay = self._backoff[0]
        acked_mark = 0
        self._last_progress = self._clock()
        try:
            while True:
                self._drop_settled_head()
                if self._fatal is not None:
                    return PublishOutcome(self.acked, self._fatal_text(self._fatal), self._fatal)
                if exhausted and not self._window:
                    return self._outcome(None)
                if self._clock() - self._last_progress > self.give_up_s:
                    self.close_timeout_s = 1.0  # what it holds cannot be delivered anyway
                    return self._outcome(self._give_up_text(producer))
                if self._renew:
                    if producer is not None:
                        await self._close(producer)
                        producer = None
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, self._backoff[1])
                    producer = await self._start()
                    if producer is None:
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, self._backoff[1])
                        continue
                assert producer is not None
                exhausted = await self._send_some(producer, source, exhausted)
                if self.acked > acked_mark:  # the producer works: a later renewal is quick
                    acked_mark, delay = self.acked, self._backoff[0]
                self._progress()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.2)
        finally:
            if producer is not None:
                await self._close(producer)

    # -- sending ------------------------------------------------------------------

    async def _start(self) -> PublishProducer | None:
        """A new producer; every message not acknowledged goes again, from the first."""
        self._generation += 1
        self._inflight = 0
        self._cursor = 0
        for slot in self._window:
            if slot.state == INFLIGHT:
                slot.state = UNSENT
        producer = self._factory()
        try:
            await asyncio.wait_for(producer.start(), self.close_timeout_s + 10.0)
        except Exception as exc:
            self._last_error = exc
            await self._close(producer)
            if is_permanent(exc):
                self._fatal = exc
            return None
        self._renew = False
        self.producers_started += 1
        return producer

    async def _send_some(
        self, producer: PublishProducer, source: MessageSource, exhausted: bool
    ) -> bool:
        """Hand messages to the producer while the window has room; returns `exhausted`."""
        window = self._window
        while not self._renew and self._fatal is None:
            if self._alone is not None and self._alone.state == INFLIGHT:
                break  # nothing after it until it has its result
            if self._cursor < len(window):
                slot = window[self._cursor]
            elif not exhausted and len(window) < WINDOW and self._window_bytes < WINDOW_BYTES:
                msg = source.take()
                if msg is None:
                    return source.exhausted  # or the input is waiting for more
                self.ledger.made(msg)
                if len(msg.lines) == 1 and self.already.get(msg.lines[0]) == digest(msg.value):
                    self.ledger.settled(msg, refused=False)  # on the topic from the last run
                    self.already_there += 1
                    continue
                slot = _Slot(msg, isolate=len(msg.value) > BATCH_BYTES)
                window.append(slot)
                self._window_bytes += len(msg.value)
            else:
                break
            if slot.state != UNSENT:
                self._cursor += 1
                continue
            if slot.isolate and self._inflight:
                break  # on its own: once everything before it has its result
            try:
                fut = await asyncio.wait_for(
                    producer.send(
                        self.topic,
                        slot.msg.value,
                        slot.msg.key,
                        headers=[line_header(slot.msg.lines[0])],
                    ),
                    SEND_WAIT_S,
                )
            except (TimeoutError, KafkaTimeoutError):
                break  # the producer's buffer is full: the broker is slow or away
            except Exception as exc:
                self._last_error = exc
                if is_size_refusal(exc):  # over the producer's own limit: never sent
                    self._refuse(slot, exc)
                    self._cursor += 1
                    continue
                if is_permanent(exc):
                    self._fatal = exc
                else:
                    self._renew = True
                break
            slot.state = INFLIGHT
            slot.generation = self._generation
            self._inflight += 1
            self._cursor += 1
            fut.add_done_callback(functools.partial(self._on_result, slot, self._generation))
            if slot.isolate:
                self._alone = slot
        return exhausted

    def _on_result(self, slot: _Slot, generation: int, fut: asyncio.Future[Any]) -> None:
        exc: BaseException | None = asyncio.CancelledError() if fut.cancelled() else fut.exception()
        current = generation == self._generation
        if current and slot.state == INFLIGHT:
            self._inflight -= 1
        self._wake.set()
        if exc is None:
            if slot.state != ACKED:
                slot.state = ACKED
                self.acked += 1
                self.ledger.settled(slot.msg, refused=False)
            self._last_progress = self._clock()
            return
        if not current or slot.state in (ACKED, REFUSED):
            return  # a replaced producer's failure: the message goes again through the new one
        self._last_error = exc
        slot.state = UNSENT
        if is_size_refusal(exc):
            if slot.isolate:
                self._refuse(slot, exc)
            else:
                slot.isolate = True  # perhaps refused for the others in its batch: alone, again
        elif is_permanent(exc):
            self._fatal = exc
            return
        # the producer's sequence numbers for that partition are broken now
        self._renew = True

    def _refuse(self, slot: _Slot, exc: BaseException) -> None:
        slot.state = REFUSED
        self.ledger.settled(slot.msg, refused=True)
        self._last_progress = self._clock()  # a refusal is an answer too
        self._on_refused(slot.msg, exc)

    def _drop_settled_head(self) -> None:
        window = self._window
        while window and window[0].state in (ACKED, REFUSED):
            self._window_bytes -= len(window.popleft().msg.value)
            if self._cursor:
                self._cursor -= 1

    # -- ending -------------------------------------------------------------------

    def _outcome(self, error: str | None) -> PublishOutcome:
        return PublishOutcome(messages=self.acked, error=error)

    def _give_up_text(self, producer: PublishProducer | None) -> str:
        why = f" (last error: {_describe(self._last_error)})" if self._last_error else ""
        if producer is None:
            return f"could not start a producer for {self.give_up_s:g}s{why}"
        return f"no acknowledgement from Kafka for {self.give_up_s:g}s{why}"

    def _fatal_text(self, exc: BaseException) -> str:
        return f"Kafka refused a write to {self.topic} for good: {_describe(exc)}"

    async def _close(self, producer: PublishProducer) -> None:
        """Close within close_timeout_s, cutting the connections if a flush cannot finish."""
        try:
            await asyncio.wait_for(producer.stop(), self.close_timeout_s)
            return
        except Exception:  # the broker is away: stop() waits for a flush that cannot end
            pass
        sender = getattr(producer, "_sender", None)
        task = getattr(sender, "sender_task", None)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=1.0)
        client = getattr(producer, "client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 1.0)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    if not text or text.startswith(name):  # aiokafka's texts often start with it
        return text or name
    return f"{name}: {text}"
