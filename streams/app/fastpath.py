"""frwatch's Kafka consumer for Faust: never lose fetched records, and a leaner per-message path.

Changes to faust-streaming 0.15's aiokafka consumer, registered through `FrwatchApp`; the
evidence behind each is in docs/operations.md, "Faust consumer changes":

1. After a rebalance, partitions without a committed offset restart from their beginning
   (aiokafka's seek to committed offsets skips them, and records fetched during table
   recovery had moved their position past records never processed).
2. The flow stops before the rebalance's final seek, so nothing is fetched between that seek
   and the clearing of the stream buffers that comes with resuming the flow.
3. Read offsets are forgotten when the flow resumes, so records sought back to are not
   dropped as already read.
4. The drain loop's `wait_first(callback(message), suspend_flow.wait())` (four tasks and an
   `asyncio.wait` per message) first runs the callback one step synchronously; only a
   callback that really has to wait becomes a task, with Faust's semantics from then on.
   Buffer pressure no longer pauses fetching (Faust's fetcher then slept a second): the
   next delivery waits for the buffer to drain instead, so deliveries come in bursts.
5. Waiting for the messages taken to be acked (at a stop or a revocation) is bounded: a
   message whose writes Kafka refused, or cannot take while it is away, is never acked
   (streams/app/tickets.py), and Faust would wait for it forever. After `wait_empty_s`
   what is acked is committed and the rest is processed again by whoever owns it next.
6. A clean stop leaves the consumer group even as a static member (FRWATCH_INSTANCE_ID):
   aiokafka sends no LeaveGroup for one, so its partitions would wait for its session to
   time out (60 s) before another worker took them over. A killed worker sends nothing and
   takes its place back when it starts again with the same instance id.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextvars
import time
from collections.abc import Generator, Mapping
from functools import cached_property
from types import CoroutineType
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from mode.services import WaitResults


class _Resume(collections.abc.Coroutine[Any, Any, Any]):
    """The rest of a coroutine whose first step already ran and yielded `pending`.

    Given to `create_task` as the task's coroutine: the task's first step receives
    `pending` (the future the coroutine is waiting on), every later step and every
    exception, cancellation included, goes into the original coroutine. A task cancelled
    before it ever ran therefore cancels the coroutine at its await, exactly as if it had
    been a task from the start: a lock waiter is withdrawn, `finally` blocks run.
    """

    __slots__ = ("coro", "pending", "started")

    def __init__(self, coro: collections.abc.Coroutine[Any, Any, Any], pending: Any) -> None:
        self.coro = coro
        self.pending = pending
        self.started = False

    def send(self, value: Any) -> Any:
        """The first step hands over `pending`; later ones go to the coroutine."""
        if not self.started:
            self.started = True
            return self.pending
        return self.coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        """Raise inside the coroutine, where it waits (the task's cancellation included)."""
        self.started = True
        if val is None and tb is None:
            return self.coro.throw(typ)
        return self.coro.throw(typ, val, tb)  # pragma: no cover - legacy signature

    def close(self) -> None:
        """Close the coroutine (only when it is garbage: a task always runs to the end)."""
        self.coro.close()

    def __await__(self) -> Generator[Any, Any, Any]:  # pragma: no cover - tasks only
        raise TypeError("_Resume is only meant to be the coroutine of a task")


def _is_wait_of(coro: object, event: asyncio.Event) -> bool:
    """Whether `coro` is a not yet started `event.wait()` (the drain loop's second argument)."""
    frame = getattr(coro, "cr_frame", None)
    return (
        frame is not None
        and getattr(coro, "cr_code", None) is asyncio.Event.wait.__code__
        and frame.f_locals.get("self") is event
    )


async def _seek_to_beginning(consumer: Any, partitions: list[Any]) -> None:
    """In the consumer thread: seek partitions to their first offset (aiokafka's API)."""
    await consumer.seek_to_beginning(*partitions)


class LeavingConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):  # type: ignore[misc]
    """Faust's consumer thread; on a clean stop a static member leaves the group too."""

    async def on_thread_stop(self) -> None:
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is not None and getattr(coordinator, "_group_instance_id", None):
            # aiokafka's close sends LeaveGroup (by member id) only for dynamic members
            coordinator._group_instance_id = None
        await super().on_thread_stop()


class FastPathConsumer(faust_aiokafka.Consumer):  # type: ignore[misc]
    """Faust's aiokafka consumer with the changes described in the module docstring."""

    #: drain-loop deliveries that completed synchronously / that had to become a task
    fast_deliveries = 0
    slow_deliveries = 0
    #: partitions sought to their beginning because they had no committed offset
    uncommitted_seeks = 0

    #: how long a delivery waits for a buffer under pressure to drain before going on anyway
    drain_wait_s = 0.1
    #: how long a stop or a revocation waits for messages in flight to be acked
    wait_empty_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # set while no stream buffer is under pressure
        self._drained = asyncio.Event()
        self._drained.set()

    def _new_consumer_thread(self) -> Any:
        return LeavingConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def on_buffer_full(self, tp: TP) -> None:
        """A stream buffer is under pressure: hold deliveries until it drains.

        Faust stops fetching such a partition until its buffer drains, and when every
        partition is stopped its fetcher sleeps a whole second; with deliveries this fast a
        busy agent's buffer is under pressure all the time, and the worker spent its time
        asleep. Fetching goes on instead, and the next delivery waits until the agent has
        emptied its buffer (`on_buffer_drop`), so that deliveries come in bursts that take
        the synchronous path, rather than one by one into a full buffer.
        """
        self._drained.clear()

    def on_buffer_drop(self, tp: TP) -> None:
        """The buffer under pressure has drained: deliveries go on."""
        self._drained.set()

    async def _wait_for_drain(self) -> None:
        # raced against a rebalance (suspend_flow); bounded, so a missed drop costs little
        await super().wait_first(
            self._drained.wait(), self.suspend_flow.wait(), timeout=self.drain_wait_s
        )
        self._drained.set()

    async def wait_empty(self) -> None:
        """Wait for every message taken to be acked, for at most `wait_empty_s`; commit.

        Faust's own loop cannot be cut short from outside (it swallows the cancellation);
        this one does what it does (commit, wait for an ack, forget the acked) until then.
        """
        deadline = time.monotonic() + self.wait_empty_s
        while not self.should_stop and self._unacked_messages:
            if time.monotonic() >= deadline:
                self.log.warning(
                    "%d messages not acked within %.0fs (their writes are not acknowledged): "
                    "committing the rest; they are processed again",
                    len(self._unacked_messages),
                    self.wait_empty_s,
                )
                break
            await self.commit()
            if not self._unacked_messages:
                break
            await self._wait_for_ack(timeout=1)
            self._clean_unacked_messages()
        await self.commit_and_end_transactions()

    async def perform_seek(self) -> None:
        """Stop the flow, then Faust's seek to the committed offsets (the rebalance's last).

        Faust seeks after a rebalance and clears the stream buffers only later, when it
        resumes the flow (`flow_control.resume()` right before `resume_flow()`). If the flow
        was already running (no table to recover), records fetched after the seek and
        delivered before the clear were lost: the clear dropped them and the position was
        already past them. With the flow stopped here, nothing is fetched or delivered
        between the seek and the resumption; whatever was delivered before is cleared and
        fetched again from the sought position.
        """
        self.stop_flow()
        await super().perform_seek()

    def resume_flow(self) -> None:
        """Forget the read offsets, then let the flow go on.

        Faust's drain loop drops every record below a partition's last *read* offset. After
        a seek back (a rebalance), records that were read but cleared from the buffers come
        again and must not be dropped; normal fetching never goes backwards, so forgetting
        the read offsets whenever the flow resumes costs nothing.
        """
        self._read_offset.clear()
        self._drained.set()  # the buffers were cleared: no pressure left
        super().resume_flow()

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Faust's seek to the committed offsets, plus the partitions that have none.

        aiokafka's `seek_to_committed` seeks only partitions whose committed offset is
        above 0. After a rebalance Faust clears the stream buffers and relies on this seek
        to fetch the cleared records again; on a partition without a committed offset they
        were skipped instead. Such a partition starts again where a new consumer would: at
        its beginning (`consumer_auto_offset_reset="earliest"`, which frwatch sets).
        Changelog partitions are left to table recovery, which positions them itself.
        """
        # Faust's annotation says int, but partitions without a committed offset map to None
        committed: Mapping[TP, int] = await super().seek_to_committed()
        uncommitted = [
            tp for tp, offset in committed.items() if not offset and not self._is_changelog_tp(tp)
        ]
        if uncommitted and self.app.conf.consumer_auto_offset_reset == "earliest":
            self.uncommitted_seeks += len(uncommitted)
            thread = self._thread
            await thread.call_thread(_seek_to_beginning, thread._ensure_consumer(), uncommitted)
        return committed

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        """Faust's `wait_first`, with a synchronous first step for the drain loop's callback.

        Only the drain loop's call, `wait_first(callback(message), suspend_flow.wait())`
        while the flow is not suspended, takes the fast path. The callback runs one step in
        a copy of the current context, as a task would. If it finishes, that is the result
        (an exception propagates, as from Faust's `wait_first`). If it has to wait (a full
        stream buffer, suspended flow control, a full producer buffer, the conductor lock),
        the rest of it becomes a task that Faust's `wait_first` races against `suspend_flow`
        as before, so a rebalance still interrupts a blocked delivery.
        """
        if not self._drained.is_set() and not self.suspend_flow.is_set():
            await self._wait_for_drain()
        if (
            len(coros) == 2
            and timeout is None
            and not self.suspend_flow.is_set()
            and type(coros[0]) is CoroutineType
            and _is_wait_of(coros[1], self.suspend_flow)
        ):
            callback, suspend_wait = coros
            context = contextvars.copy_context()
            try:
                pending = context.run(callback.send, None)
            except StopIteration as done:
                suspend_wait.close()
                FastPathConsumer.fast_deliveries += 1
                if self._stopped.is_set() or self._crashed.is_set():
                    return WaitResults([], [], True)
                return WaitResults([callback], [done.value], False)
            except BaseException:
                suspend_wait.close()
                raise
            FastPathConsumer.slow_deliveries += 1
            task = asyncio.get_running_loop().create_task(
                _Resume(callback, pending), context=context
            )
            return await super().wait_first(task, suspend_wait)  # type: ignore[no-any-return]
        return await super().wait_first(*coros, timeout=timeout)  # type: ignore[no-any-return]


class _LeanProducerBuffer(ProducerBuffer):  # type: ignore[misc]
    """Faust's producer buffer, its size read without a settings lookup.

    The conductor asks for the size before delivering every message; Faust's property looks
    up `producer_threaded` in the app's settings each time (a slow `__getattribute__`).
    Only used when the producer is not threaded, the branch this size is.
    """

    @property
    def size(self) -> int:
        """Messages waiting to be produced."""
        return len(self.pending._queue)  # type: ignore[attr-defined]


class FrwatchProducer(faust_aiokafka.Producer):  # type: ignore[misc]
    """Faust's aiokafka producer with `_LeanProducerBuffer` (frwatch's producer is not threaded)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.threaded_producer is None:
            self.buffer.__class__ = _LeanProducerBuffer


class FastPathTransport(faust_aiokafka.Transport):  # type: ignore[misc]
    """The aiokafka transport with FastPathConsumer and FrwatchProducer."""

    Consumer = FastPathConsumer
    Producer = FrwatchProducer


class FrwatchApp(faust.App):  # type: ignore[misc]
    """faust.App whose transport is FastPathTransport."""

    def _new_transport(self) -> Any:
        return FastPathTransport(self.conf.broker_consumer, self)

    @cached_property
    def _event_type(self) -> Any:
        return self.conf.Event

    def create_event(self, key: Any, value: Any, headers: Any, message: Any) -> Any:
        """Faust's event for a message, without a settings lookup per message."""
        return self._event_type(self, key, value, headers, message)
