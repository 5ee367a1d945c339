"""`streams.app.in_order.ingest_in_order`: order, acks and limits of screening elsewhere.

The events are stand-ins with Faust's reference counting (`faust.types.tuples.Message`: a
message delivered to one stream holds one reference; `incref` adds one; the ack that drops
the last one is final) and a stream that acks each event when the next one is asked for,
as Faust's does. Screening futures are resolved by the test, in any order it likes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from streams.app.in_order import SettlerStopped, ingest_in_order
from streams.app.routing import Screened
from streams.app.screening import ScreeningUnavailable

BIG = 100  # messages of at least this many bytes are screened elsewhere
TIMEOUT_S = 10


class Message:
    def __init__(self, offset: int, size: int, log: list[tuple[str, int]]) -> None:
        self.offset = offset
        self.value = b"x" * size
        self.refcount = 1  # delivered to one stream
        self.log = log

    def incref(self) -> None:
        self.refcount += 1


class Event:
    def __init__(self, message: Message) -> None:
        self.message = message

    def ack(self) -> bool:
        msg = self.message
        assert msg.refcount > 0, f"{msg.offset} acked once too often"
        msg.refcount -= 1
        if msg.refcount == 0:
            msg.log.append(("final ack", msg.offset))
            return True
        return False


async def stream(
    messages: list[Message], gates: dict[int, asyncio.Event], closed: asyncio.Event
) -> AsyncIterator[Event]:
    """Faust's stream: each event is acked when the next one is asked for. A message with a
    gate comes once the test opens it; after the last one the stream waits to be closed (a
    live stream never ends, and its end cancels what is in flight)."""
    for msg in messages:
        if msg.offset in gates:
            await gates[msg.offset].wait()
        event = Event(msg)
        yield event
        event.ack()
        await asyncio.sleep(0)
    await closed.wait()


class Harness:
    """Runs ingest_in_order over `sizes`, screening futures held until the test releases them."""

    def __init__(self, sizes: list[int], limit_bytes: int = 10_000) -> None:
        self.log: list[tuple[str, int]] = []
        self.messages = [Message(i, size, self.log) for i, size in enumerate(sizes)]
        self.futures: dict[int, asyncio.Future[Screened]] = {}
        self.limit_bytes = limit_bytes
        self.fail_on: int | None = None
        self.unavailable = False
        self.final_acks: list[int] = []
        self.stopped: list[BaseException] = []
        self.gates: dict[int, asyncio.Event] = {}

    def submit(self, value: bytes, at_ms: int) -> asyncio.Future[Screened]:
        if self.unavailable:
            raise ScreeningUnavailable("none running")
        offset = next(m.offset for m in self.messages if m.value is value)
        self.log.append(("submitted", offset))
        future: asyncio.Future[Screened] = asyncio.get_running_loop().create_future()
        self.futures[offset] = future
        return future

    async def ingest_one(
        self, msg: Message, screening: asyncio.Future[Screened] | None, at_ms: int
    ) -> None:
        if screening is not None:
            await screening
        if msg.offset == self.fail_on:
            raise RuntimeError("counting failed")
        self.log.append(("routed elsewhere" if screening else "routed here", msg.offset))

    def run(self, release: Callable[[Harness], Awaitable[None]] | None = None) -> None:
        """Run until `release` returns and every message is acked, then close the stream."""

        async def main() -> None:
            closed = asyncio.Event()
            ingest = asyncio.ensure_future(
                ingest_in_order(
                    stream(self.messages, self.gates, closed),
                    self.submit,
                    self.ingest_one,  # type: ignore[arg-type]
                    lambda msg: self.final_acks.append(msg.offset),
                    self.stopped.append,
                    lambda: 0,
                    self.limit_bytes,
                    BIG,
                )
            )
            if release is not None:
                await release(self)
            await until(lambda: ingest.done() or all(m.refcount == 0 for m in self.messages))
            closed.set()
            await ingest

        asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))

    def events(self, kind: str) -> list[int]:
        return [offset for k, offset in self.log if k == kind]


async def until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.001)


def test_screened_out_of_order_still_routed_and_acked_in_order() -> None:
    h = Harness([BIG, BIG, BIG, BIG])

    async def release(h: Harness) -> None:
        await until(lambda: len(h.futures) == 4)
        for offset in (3, 1, 2, 0):  # answers come back in any order (several processes)
            h.futures[offset].set_result(Screened())
            await asyncio.sleep(0.01)

    h.run(release)
    assert h.events("routed elsewhere") == [0, 1, 2, 3]
    assert h.events("final ack") == [0, 1, 2, 3] == h.final_acks
    # the settler's ack is the final one: each message after it has been routed
    for offset in range(4):
        assert h.log.index(("routed elsewhere", offset)) < h.log.index(("final ack", offset))
    assert all(m.refcount == 0 for m in h.messages)


def test_nothing_is_acked_while_the_first_message_waits_for_screening() -> None:
    h = Harness([BIG, 10, BIG, 10])
    seen: list[list[int]] = []

    async def release(h: Harness) -> None:
        await until(lambda: len(h.futures) == 2)
        await asyncio.sleep(0.05)
        seen.append(h.events("final ack"))
        h.futures[0].set_result(Screened())
        h.futures[2].set_result(Screened())

    h.run(release)
    assert seen == [[]], "a message behind one being screened must not be acked before it"
    # the small messages behind big ones waited their turn, screened here
    assert h.log.count(("routed here", 1)) == 1 and h.log.count(("routed here", 3)) == 1
    assert h.events("final ack") == [0, 1, 2, 3]


def test_small_messages_with_nothing_ahead_are_routed_here_and_acked_by_the_stream() -> None:
    h = Harness([10, 10, 10])
    h.run()
    assert h.events("routed here") == [0, 1, 2]
    assert h.events("submitted") == []
    assert h.events("final ack") == [0, 1, 2]
    assert h.final_acks == []  # the stream's ack was the final one


def test_at_most_limit_bytes_are_in_flight() -> None:
    h = Harness([BIG] * 6, limit_bytes=3 * BIG)
    in_flight_seen: list[int] = []

    async def release(h: Harness) -> None:
        for offset in range(6):
            await until(lambda offset=offset: offset in h.futures)  # type: ignore[misc]
            await asyncio.sleep(0.01)
            in_flight_seen.append(len(h.futures) - offset)
            h.futures[offset].set_result(Screened())

    h.run(release)
    assert max(in_flight_seen) == 3
    assert h.events("final ack") == list(range(6))


def test_with_no_screening_process_left_big_messages_are_screened_here_in_turn() -> None:
    h = Harness([BIG, BIG, 10])
    h.unavailable = True
    h.run()
    assert h.events("routed here") == [0, 1, 2]
    assert h.events("final ack") == [0, 1, 2]


def test_a_settler_that_stops_is_reported_and_nothing_after_is_routed_or_acked() -> None:
    h = Harness([BIG, BIG, BIG, 10])
    h.fail_on = 1
    h.gates[3] = asyncio.Event()

    async def release(h: Harness) -> None:
        await until(lambda: len(h.futures) == 3)
        for offset in range(3):
            h.futures[offset].set_result(Screened())
        await until(lambda: bool(h.stopped))  # told at once, while the stream is quiet
        assert isinstance(h.stopped[0], RuntimeError)
        h.gates[3].set()  # the next message

    with pytest.raises(SettlerStopped) as raised:
        h.run(release)
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert h.events("final ack") == [0]  # 1 failed: it and everything after stay unacked
    assert h.events("routed here") == []  # the next message was not routed
