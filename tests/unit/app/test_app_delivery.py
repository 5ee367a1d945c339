"""`streams.app.delivery` and `streams.app.tickets`: order, replacement, refusal, stop, acks.

The producer is a stand-in whose acknowledgements the test gives, in any order it likes:
this checks the service's bookkeeping, not Kafka (tests/integration/test_delivery.py does
that against the real broker).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
)
from prometheus_client import CollectorRegistry

from streams.app.delivery import Delivery, DeliveryStopped, delivery_failures_counter
from streams.app.tickets import InputAcker

TIMEOUT_S = 10


class FakeProducer:
    def __init__(self, number: int, world: World) -> None:
        self.number = number
        self.world = world
        self.sent: list[tuple[str, bytes | None, asyncio.Future[Any]]] = []
        self.stopped = False

    async def start(self) -> None:
        if self.world.start_failures:
            self.world.start_failures -= 1
            raise KafkaConnectionError("broker down")

    async def stop(self) -> None:
        self.stopped = True
        if self.world.hang_on_stop:
            await asyncio.Event().wait()

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Any]:
        if self.world.enqueue_failures:
            self.world.enqueue_failures -= 1
            raise KafkaTimeoutError()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((topic, value, fut))
        self.world.log.append((self.number, value))
        return fut

    def ack(self, value: bytes) -> None:
        for _, v, fut in self.sent:
            if v == value and not fut.done():
                fut.set_result(("meta", self.number, v))
                return
        raise AssertionError(f"{value!r} is not in flight on producer {self.number}")

    def fail(self, value: bytes, exc: BaseException) -> None:
        for _, v, fut in self.sent:
            if v == value and not fut.done():
                fut.set_exception(exc)
                return
        raise AssertionError(f"{value!r} is not in flight on producer {self.number}")


class World:
    def __init__(self) -> None:
        self.producers: list[FakeProducer] = []
        self.log: list[tuple[int, bytes | None]] = []  # (producer, value) in send order
        self.start_failures = 0
        self.enqueue_failures = 0
        self.hang_on_stop = False
        self.fatal: list[tuple[str, BaseException]] = []
        self.registry = CollectorRegistry()

    def factory(self) -> FakeProducer:
        producer = FakeProducer(len(self.producers), self)
        self.producers.append(producer)
        return producer

    def delivery(self, **kwargs: Any) -> Delivery:
        return Delivery(
            "127.0.0.1:1",
            on_fatal=lambda topic, exc: self.fatal.append((topic, exc)),
            failures=delivery_failures_counter(self.registry),
            producer_factory=self.factory,
            backoff_s=(0.01, 0.05),
            **kwargs,
        )

    def failures(self, topic: str) -> float | None:
        return self.registry.get_sample_value("frwatch_delivery_failures_total", {"topic": topic})


async def until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.005)


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))  # type: ignore[arg-type]


def test_futures_resolve_in_call_order_whatever_order_the_acks_come_in() -> None:
    async def main() -> None:
        world = World()
        svc = world.delivery()
        await svc.start()
        futs = [svc.send("t", b"%d" % i, partition=i % 2) for i in range(4)]
        await until(lambda: len(world.log) == 4)
        p = world.producers[0]
        resolved: list[int] = []
        for i, f in enumerate(futs):
            f.add_done_callback(lambda _f, i=i: resolved.append(i))
        p.ack(b"3")
        p.ack(b"1")
        await asyncio.sleep(0.02)
        assert resolved == []  # record 0 is not acknowledged yet
        p.ack(b"0")
        await until(lambda: len(resolved) == 2)
        assert resolved == [0, 1]
        p.ack(b"2")
        await until(lambda: len(resolved) == 4)
        assert resolved == [0, 1, 2, 3]
        assert (await futs[3]) == ("meta", 0, b"3")
        await svc.stop()

    run(main)


@pytest.mark.parametrize("error", [OutOfOrderSequenceNumber, UnknownProducerId])
def test_a_broken_producer_is_replaced_and_the_unacknowledged_are_resent_in_order(
    error: type[Exception],
) -> None:
    async def main() -> None:
        world = World()
        svc = world.delivery()
        await svc.start()
        futs = [svc.send("t", b"%d" % i) for i in range(5)]
        await until(lambda: len(world.log) == 5)
        first = world.producers[0]
        first.ack(b"0")
        first.ack(b"2")  # acknowledged: must not be written again
        first.fail(b"1", error())
        await until(lambda: len(world.producers) == 2 and len(world.producers[1].sent) == 3)
        assert first.stopped
        second = world.producers[1]
        assert [v for _, v, _ in second.sent] == [b"1", b"3", b"4"]
        for v in (b"1", b"3", b"4"):
            second.ack(v)
        values = await asyncio.gather(*futs)
        assert [v[2] for v in values] == [b"0", b"1", b"2", b"3", b"4"]
        assert svc.producers_started == 2
        assert world.fatal == []
        await svc.stop()

    run(main)


def test_late_failures_of_a_replaced_producer_are_ignored_but_its_acks_count() -> None:
    async def main() -> None:
        world = World()
        svc = world.delivery(close_timeout_s=0.05)
        world.hang_on_stop = True  # the old producer's flush cannot finish
        await svc.start()
        futs = [svc.send("t", b"%d" % i) for i in range(3)]
        await until(lambda: len(world.log) == 3)
        first = world.producers[0]
        first.fail(b"0", OutOfOrderSequenceNumber())
        await until(lambda: len(world.producers) == 2 and len(world.producers[1].sent) == 3)
        world.hang_on_stop = False
        first.fail(b"1", OutOfOrderSequenceNumber())  # stale: no second replacement
        first.ack(b"2")  # still true: the record is in the log
        second = world.producers[1]
        second.ack(b"0")
        second.ack(b"1")
        await asyncio.gather(*futs)
        await asyncio.sleep(0.05)
        assert len(world.producers) == 2
        await svc.stop()

    run(main)


def test_a_permanent_refusal_fails_its_future_and_everything_after_it_once() -> None:
    async def main() -> None:
        world = World()
        svc = world.delivery()
        await svc.start()
        futs = [svc.send("detect", b"%d" % i) for i in range(4)]
        await until(lambda: len(world.log) == 4)
        p = world.producers[0]
        p.ack(b"0")
        assert (await futs[0])[2] == b"0"
        refusal = MessageSizeTooLargeError()
        p.fail(b"1", refusal)
        with pytest.raises(MessageSizeTooLargeError):
            await futs[1]
        for f in futs[2:]:
            with pytest.raises(DeliveryStopped, match="detect"):
                await f
        p.ack(b"2")  # too late: nothing after a refusal is reported delivered
        p.fail(b"3", OutOfOrderSequenceNumber())
        with pytest.raises(DeliveryStopped):
            await svc.send("detect", b"later")
        assert world.fatal == [("detect", refusal)]
        assert world.failures("detect") == 1.0
        assert len(world.producers) == 1
        await svc.stop()

    run(main)


def test_a_record_that_cannot_even_be_queued_for_good_is_a_refusal() -> None:
    async def main() -> None:
        world = World()
        svc = world.delivery()
        await svc.start()

        async def refuse(*args: Any, **kwargs: Any) -> asyncio.Future[Any]:
            raise MessageSizeTooLargeError("larger than max_request_size")

        await until(lambda: len(world.producers) == 1)
        world.producers[0].send = refuse  # type: ignore[method-assign]
        with pytest.raises(MessageSizeTooLargeError):
            await svc.send("dlq", b"x" * 10)
        assert [t for t, _ in world.fatal] == ["dlq"]
        assert world.failures("dlq") == 1.0
        await svc.stop()

    run(main)


def test_transient_trouble_is_waited_out_in_order() -> None:
    async def main() -> None:
        world = World()
        world.start_failures = 3  # broker down at start
        world.enqueue_failures = 2  # then metadata timeouts
        svc = world.delivery()
        await svc.start()
        futs = [svc.send("t", b"%d" % i) for i in range(3)]
        await until(lambda: len(world.log) == 3)
        assert [v for _, v in world.log] == [b"0", b"1", b"2"]
        p = world.producers[-1]
        for v in (b"0", b"1", b"2"):
            p.ack(v)
        await asyncio.gather(*futs)
        assert world.fatal == []
        await svc.stop()

    run(main)


def test_stop_is_bounded_when_nothing_is_acknowledged_and_the_producer_hangs() -> None:
    async def main() -> None:
        world = World()
        world.hang_on_stop = True
        svc = world.delivery(flush_timeout_s=0.2, close_timeout_s=0.2)
        await svc.start()
        futs = [svc.send("t", b"%d" % i) for i in range(3)]
        await until(lambda: len(world.log) == 3)
        t0 = time.monotonic()
        await svc.stop()
        assert time.monotonic() - t0 < 1.5
        for f in futs:
            with pytest.raises(DeliveryStopped, match="stopped before"):
                await f
        assert world.fatal == []  # stopping is not a refusal

    run(main)


def test_stop_waits_for_the_acknowledgements_it_can_get() -> None:
    async def main() -> None:
        world = World()
        svc = world.delivery(flush_timeout_s=5.0)
        await svc.start()
        futs = [svc.send("t", b"%d" % i) for i in range(2)]
        await until(lambda: len(world.log) == 2)
        stopping = asyncio.ensure_future(svc.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()
        world.producers[0].ack(b"0")
        world.producers[0].ack(b"1")
        await stopping
        assert [(await f)[2] for f in futs] == [b"0", b"1"]

    run(main)


def test_a_stalled_producer_is_replaced() -> None:
    async def main() -> None:
        world = World()
        svc = world.delivery(stall_s=0.1)
        await svc.start()
        fut = svc.send("t", b"0")
        await until(lambda: len(world.producers) == 2 and len(world.producers[1].sent) == 1)
        world.producers[1].ack(b"0")
        await fut
        await svc.stop()

    run(main)


# -- tickets --------------------------------------------------------------------


def _futures(n: int) -> list[asyncio.Future[Any]]:
    loop = asyncio.get_running_loop()
    return [loop.create_future() for _ in range(n)]


def test_inputs_are_reported_in_order_once_all_their_deliveries_are_done() -> None:
    async def main() -> None:
        delivered: list[str] = []
        acker: InputAcker[str] = InputAcker(delivered.append)
        a, b, c = _futures(3)
        t1 = acker.open("m1")
        t1.add(a)
        t1.add(b)
        t1.close()
        t2 = acker.open("m2")  # nothing to deliver
        t2.close()
        t3 = acker.open("m3")
        t3.add(c)
        c.set_result(1)
        await asyncio.sleep(0)
        assert delivered == []  # m1 first
        a.set_result(1)
        await asyncio.sleep(0)
        assert delivered == []
        b.set_result(1)
        await asyncio.sleep(0)
        assert delivered == ["m1", "m2"]  # m3 is still open
        t3.close()
        assert delivered == ["m1", "m2", "m3"]
        assert len(acker) == 0
        await t3.delivered()

    run(main)


def test_a_failed_delivery_stops_the_acker_for_good() -> None:
    async def main() -> None:
        delivered: list[str] = []
        failed: list[tuple[str, BaseException]] = []
        acker: InputAcker[str] = InputAcker(delivered.append, lambda m, e: failed.append((m, e)))
        a, b, c = _futures(3)
        for name, fut in (("m1", a), ("m2", b), ("m3", c)):
            t = acker.open(name)
            t.add(fut)
            t.close()
        refusal = MessageSizeTooLargeError()
        b.set_exception(refusal)
        c.set_exception(DeliveryStopped("after"))
        await asyncio.sleep(0)
        assert failed == [("m2", refusal)]
        a.set_result(1)
        await asyncio.sleep(0)
        assert delivered == []  # nothing is reported after a failure
        assert acker.failed
        await acker.drained()  # returns: there is nothing more to wait for

    run(main)


def test_wait_below_bounds_the_inputs_in_flight() -> None:
    async def main() -> None:
        acker: InputAcker[int] = InputAcker(lambda _: None)
        futs = _futures(3)
        for i, f in enumerate(futs):
            t = acker.open(i)
            t.add(f)
            t.close()
        waiting = asyncio.ensure_future(acker.wait_below(2))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        futs[1].set_result(1)
        await asyncio.sleep(0.01)
        assert not waiting.done()  # the first still holds both
        futs[0].set_result(1)
        await asyncio.wait_for(waiting, 1)
        assert len(acker) == 1

    run(main)


def test_a_delivered_wait_raises_the_failure() -> None:
    async def main() -> None:
        acker: InputAcker[int] = InputAcker(lambda _: None)
        t = acker.open(0)
        a, b = _futures(2)
        t.add(a)
        t.add(b)
        a.set_result(1)
        b.set_exception(MessageSizeTooLargeError())
        with pytest.raises(MessageSizeTooLargeError):
            await t.delivered()
        with pytest.raises(RuntimeError):
            t.close() or t.add(a)

    run(main)
