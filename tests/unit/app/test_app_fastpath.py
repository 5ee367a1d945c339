"""`streams.app.fastpath`: the consumer's synchronous first step, and its seek after rebalances."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

import mode
import pytest
from faust.transport.producer import ProducerBuffer
from faust.types import TP

from streams.app.fastpath import FastPathConsumer, FrwatchApp, _Resume

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def run(test: Callable[[FastPathConsumer], Awaitable[None]], **conf: Any) -> None:
    """Run `test` with a FastPathConsumer of an app that never connects."""

    async def main() -> None:
        app = FrwatchApp("unit-fastpath", broker="kafka://127.0.0.1:1", autodiscover=False, **conf)
        consumer = app.consumer
        assert isinstance(consumer, FastPathConsumer)
        await test(consumer)

    asyncio.run(main())


class SlowPathSpy:
    """Counts calls of mode's wait_first (the per-message tasks the fast path avoids)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = mode.Service.wait_first

        async def spy(service: Any, *coros: Any, timeout: Any = None) -> Any:
            self.calls += 1
            return await original(service, *coros, timeout=timeout)

        monkeypatch.setattr(mode.Service, "wait_first", spy)


def test_a_delivery_that_does_not_wait_completes_synchronously(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = SlowPathSpy(monkeypatch)

    async def test(consumer: FastPathConsumer) -> None:
        async def callback(x: int) -> int:
            VAR.set("set by the callback")
            return x * 2

        fast = FastPathConsumer.fast_deliveries
        tasks = len(asyncio.all_tasks())
        result = await consumer.wait_first(callback(21), consumer.suspend_flow.wait())
        assert result.results == [42] and not result.stopped
        assert FastPathConsumer.fast_deliveries == fast + 1
        assert spy.calls == 0 and len(asyncio.all_tasks()) == tasks
        # like a task, the callback ran in a copy of the context
        assert VAR.get() == "unset"

    run(test)


def test_an_exception_of_the_callback_propagates() -> None:
    async def test(consumer: FastPathConsumer) -> None:
        async def fails_at_once() -> None:
            raise ValueError("at once")

        async def fails_later() -> None:
            await asyncio.sleep(0)
            raise KeyError("later")

        with pytest.raises(ValueError, match="at once"):
            await consumer.wait_first(fails_at_once(), consumer.suspend_flow.wait())
        with pytest.raises(KeyError, match="later"):
            await consumer.wait_first(fails_later(), consumer.suspend_flow.wait())

    run(test)


def test_a_delivery_that_has_to_wait_falls_back_to_faust(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = SlowPathSpy(monkeypatch)

    async def test(consumer: FastPathConsumer) -> None:
        room = asyncio.Event()
        seen: list[str] = []

        async def callback() -> str:
            VAR.set("before the wait")
            await room.wait()  # a full stream buffer
            seen.append(VAR.get())
            return "delivered"

        slow = FastPathConsumer.slow_deliveries
        delivery = asyncio.ensure_future(
            consumer.wait_first(callback(), consumer.suspend_flow.wait())
        )
        await asyncio.sleep(0.05)
        assert not delivery.done()
        room.set()
        result = await asyncio.wait_for(delivery, 1)
        assert result.results == ["delivered"] and not result.stopped
        assert FastPathConsumer.slow_deliveries == slow + 1 and spy.calls == 1
        # the first step and the rest ran in one and the same copied context
        assert seen == ["before the wait"] and VAR.get() == "unset"

    run(test)


def test_suspend_flow_interrupts_a_blocked_delivery_and_releases_its_lock() -> None:
    async def test(consumer: FastPathConsumer) -> None:
        lock = asyncio.Lock()
        outcome: list[str] = []

        async def callback() -> None:
            async with lock:
                try:
                    await asyncio.Event().wait()  # never set: a buffer that stays full
                except asyncio.CancelledError:
                    outcome.append("cancelled")
                    raise

        delivery = asyncio.ensure_future(
            consumer.wait_first(callback(), consumer.suspend_flow.wait())
        )
        await asyncio.sleep(0.05)
        assert lock.locked() and not delivery.done()
        consumer.suspend_flow.set()  # a rebalance starts
        result = await asyncio.wait_for(delivery, 1)
        assert len(result.done) == 1 and result.results == [True]  # suspend_flow.wait() won
        await asyncio.sleep(0)
        assert outcome == ["cancelled"] and not lock.locked()

    run(test)


def test_a_suspended_flow_takes_faust_s_path(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = SlowPathSpy(monkeypatch)

    async def test(consumer: FastPathConsumer) -> None:
        async def callback() -> int:
            return 1

        consumer.suspend_flow.set()
        fast = FastPathConsumer.fast_deliveries
        await consumer.wait_first(callback(), consumer.suspend_flow.wait())
        assert spy.calls == 1 and FastPathConsumer.fast_deliveries == fast

    run(test)


def test_a_resumed_callback_cancelled_before_it_ran_withdraws_its_lock_wait() -> None:
    """The conductor's lock, held while Faust rebuilds its callbacks, is not left stuck."""

    async def main() -> None:
        lock = asyncio.Lock()
        await lock.acquire()  # the conductor updating its indices
        outcome: list[str] = []

        async def callback() -> None:
            try:
                async with lock:
                    outcome.append("ran")
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise

        coro = callback()
        pending = coro.send(None)  # the fast path's first step: waits for the lock
        task = asyncio.get_running_loop().create_task(_Resume(coro, pending))
        task.cancel()  # before the task ever ran
        with pytest.raises(asyncio.CancelledError):
            await task
        assert outcome == ["cancelled"]
        lock.release()

        async def next_delivery() -> str:
            async with lock:
                return "got the lock"

        assert await asyncio.wait_for(next_delivery(), 1) == "got the lock"

    asyncio.run(main())


class FakeThread:
    """Stands in for Faust's consumer thread: committed offsets, and calls made in it."""

    def __init__(self, committed: dict[TP, int | None]) -> None:
        self.committed = committed
        self.sought_to_beginning: list[TP] = []

    async def seek_to_committed(self) -> dict[TP, int | None]:
        return self.committed

    def _ensure_consumer(self) -> FakeThread:
        return self

    async def call_thread(self, fun: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return await fun(*args)

    async def seek_to_beginning(self, *partitions: TP) -> None:
        self.sought_to_beginning.extend(partitions)


REQ = [TP("unit.requests", p) for p in range(4)]
CHANGELOG = TP("unit-fastpath-windows-changelog", 0)


def test_partitions_without_a_committed_offset_restart_from_their_beginning() -> None:
    async def test(consumer: FastPathConsumer) -> None:
        committed = {REQ[0]: 17, REQ[1]: None, REQ[2]: 0, REQ[3]: 3, CHANGELOG: None}
        thread = FakeThread(committed)
        consumer._thread = thread
        consumer._is_changelog_tp = lambda tp: tp == CHANGELOG  # type: ignore[method-assign]
        assert await consumer.seek_to_committed() == committed
        # aiokafka sought REQ[0] and REQ[3]; the others would have been skipped
        assert sorted(thread.sought_to_beginning) == [REQ[1], REQ[2]]

    run(test, consumer_auto_offset_reset="earliest")


def test_with_another_reset_policy_nothing_more_is_sought() -> None:
    async def test(consumer: FastPathConsumer) -> None:
        thread = FakeThread({REQ[0]: None})
        consumer._thread = thread
        await consumer.seek_to_committed()
        assert thread.sought_to_beginning == []

    run(test, consumer_auto_offset_reset="latest")


def test_the_flow_is_stopped_before_the_final_seek_and_stays_stopped() -> None:
    """Nothing may be fetched or delivered between the seek and the buffers' clearing."""

    async def test(consumer: FastPathConsumer) -> None:
        seen: list[tuple[bool, bool]] = []

        async def seek_to_committed() -> dict[TP, int]:
            seen.append((consumer.flow_active, consumer.suspend_flow.is_set()))
            return {}

        consumer.seek_to_committed = seek_to_committed  # type: ignore[method-assign]
        consumer.resume_flow()
        assert consumer.flow_active
        await consumer.perform_seek()
        assert seen == [(False, True)]
        # only the rebalance's resumption (after Faust cleared the buffers) lets it go on
        assert not consumer.flow_active and not consumer.can_resume_flow.is_set()

    run(test)


def test_resuming_the_flow_forgets_the_read_offsets() -> None:
    """Records read before a rebalance come again after its seek: they must not be dropped."""

    async def test(consumer: FastPathConsumer) -> None:
        consumer._read_offset[REQ[0]] = 41
        consumer._read_offset[REQ[1]] = 7
        consumer.stop_flow()
        consumer.resume_flow()
        assert len(consumer._read_offset) == 0
        assert consumer.flow_active and not consumer.suspend_flow.is_set()

    run(test)


def test_the_producer_buffer_size_is_faust_s_without_the_settings_lookup() -> None:
    async def test(consumer: FastPathConsumer) -> None:
        buffer = consumer.app.producer.buffer
        assert type(buffer).__name__ == "_LeanProducerBuffer"
        assert buffer.size == 0
        for n in range(3):
            buffer.pending.put_nowait(n)
        assert buffer.size == 3 == ProducerBuffer.size.fget(buffer)  # Faust's own property

    run(test)


def test_events_are_faust_s_event_type_for_the_message() -> None:
    async def test(consumer: FastPathConsumer) -> None:
        app = consumer.app
        message = object()
        event = app.create_event(b"k", b"v", {}, message)
        assert type(event) is app.conf.Event
        assert (event.key, event.value, event.message, event.app) == (b"k", b"v", message, app)

    run(test)


# --- deliveries wait for a buffer under pressure to drain -----------------------------------


def test_under_pressure_the_next_delivery_waits_for_the_drain() -> None:
    async def test(consumer: FastPathConsumer) -> None:
        delivered: list[int] = []

        async def callback(n: int) -> None:
            delivered.append(n)

        consumer.drain_wait_s = 10.0
        consumer.on_buffer_full(REQ[0])
        waiting = asyncio.ensure_future(
            consumer.wait_first(callback(1), consumer.suspend_flow.wait())
        )
        await asyncio.sleep(0.05)
        assert delivered == [] and not waiting.done()
        consumer.on_buffer_drop(REQ[0])
        await asyncio.wait_for(waiting, 1.0)
        assert delivered == [1]
        # no pressure: no wait at all
        await consumer.wait_first(callback(2), consumer.suspend_flow.wait())
        assert delivered == [1, 2]

    run(test)


def test_a_missed_drain_costs_at_most_the_bounded_wait() -> None:
    async def test(consumer: FastPathConsumer) -> None:
        async def callback() -> str:
            return "done"

        consumer.drain_wait_s = 0.05
        consumer.on_buffer_full(REQ[0])
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await consumer.wait_first(callback(), consumer.suspend_flow.wait())
        assert result.results == ["done"]
        assert 0.04 <= loop.time() - started < 1.0
        # and it does not wait again for the same pressure
        started = loop.time()
        await consumer.wait_first(callback(), consumer.suspend_flow.wait())
        assert loop.time() - started < 0.04

    run(test)


def test_a_rebalance_interrupts_the_wait_and_resuming_clears_the_pressure() -> None:
    async def test(consumer: FastPathConsumer) -> None:
        ran: list[str] = []

        async def callback() -> None:
            ran.append("callback")

        consumer.drain_wait_s = 10.0
        consumer.on_buffer_full(REQ[0])
        waiting = asyncio.ensure_future(
            consumer.wait_first(callback(), consumer.suspend_flow.wait())
        )
        await asyncio.sleep(0.05)
        consumer.stop_flow()  # a rebalance: suspend_flow is set
        result = await asyncio.wait_for(waiting, 1.0)  # not the 10 s drain wait
        # from here on it is Faust's own race of the delivery against suspend_flow
        assert result.done and not result.stopped
        ran.clear()
        consumer.on_buffer_full(REQ[1])
        consumer.resume_flow()  # the buffers were cleared: no pressure is left
        started = asyncio.get_running_loop().time()
        await consumer.wait_first(callback(), consumer.suspend_flow.wait())
        assert ran == ["callback"]
        assert asyncio.get_running_loop().time() - started < 1.0

    run(test)


@pytest.mark.parametrize("instance_id", ["host-1a2b", None])
def test_a_clean_stop_leaves_the_group_even_as_a_static_member(
    monkeypatch: pytest.MonkeyPatch, instance_id: str | None
) -> None:
    """aiokafka's close sends LeaveGroup only when the coordinator has no instance id."""
    from types import SimpleNamespace

    from faust.transport.drivers import aiokafka as faust_aiokafka

    from streams.app.fastpath import LeavingConsumerThread

    coordinator = SimpleNamespace(_group_instance_id=instance_id)
    seen: list[str | None] = []

    async def faust_stop(self: Any) -> None:  # Faust's: stops aiokafka's consumer
        seen.append(self._consumer._coordinator._group_instance_id)

    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "on_thread_stop", faust_stop)
    thread = object.__new__(LeavingConsumerThread)
    thread._consumer = SimpleNamespace(_coordinator=coordinator)
    asyncio.run(thread.on_thread_stop())
    assert seen == [None]


def test_faust_is_the_release_the_overrides_were_checked_against() -> None:
    """fastpath.py overrides Faust and aiokafka internals (seek, drain loop, wait_empty,
    LeaveGroup): an upgrade must re-check each of them against the new release first."""
    from importlib.metadata import version

    assert version("faust-streaming") == "0.15.3"
    assert version("aiokafka") == "0.14.0"  # LeavingConsumerThread reads its coordinator
