"""Input messages acknowledged in input order, each only once what it caused is delivered.

No Faust and no Kafka here. A `Ticket` collects the delivery futures (from
`streams.app.delivery.Delivery.send`) of one input message; an `InputAcker` reports the
messages to `on_delivered` strictly in the order their tickets were opened, each once its
ticket is closed and every future on it succeeded. The worker's callback acks the Faust
message there (see `hold_message` / `release_message`), so an offset commit never passes
an input whose forwards, dead letters or alerts Kafka has not acknowledged.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")


class Ticket(Generic[Item]):
    """The deliveries that one input message caused; reported by its acker once all succeed."""

    __slots__ = ("_acker", "_closed", "_futures", "_pending", "item")

    def __init__(self, acker: InputAcker[Item], item: Item) -> None:
        self._acker = acker
        self.item = item
        self._futures: list[asyncio.Future[Any]] = []
        self._pending = 0
        self._closed = False

    def add(self, future: asyncio.Future[Any]) -> None:
        """Hold the input until `future` succeeds (a failure stops the acker)."""
        if self._closed:
            raise RuntimeError("a closed ticket takes no more deliveries")
        self._futures.append(future)
        self._pending += 1
        future.add_done_callback(self._on_done)

    def close(self) -> None:
        """Nothing more will be added: the input may be reported once its futures succeed."""
        if not self._closed:
            self._closed = True
            self._acker._advance()

    @property
    def complete(self) -> bool:
        """Closed, and every future on it is done (successfully or not)."""
        return self._closed and self._pending == 0

    async def delivered(self) -> None:
        """Wait until every future added so far is done; raise the first failure."""
        for fut in list(self._futures):
            if not fut.done():
                await asyncio.wait([fut])  # a cancelled waiter leaves the future alone
            fut.result()

    def _on_done(self, future: asyncio.Future[Any]) -> None:
        self._pending -= 1
        if future.cancelled():
            self._acker._fail(self, asyncio.CancelledError("a delivery future was cancelled"))
        elif (exc := future.exception()) is not None:
            self._acker._fail(self, exc)
        else:
            self._acker._advance()


class InputAcker(Generic[Item]):
    """Reports input messages in the order their tickets were opened, each once delivered.

    `on_delivered(item)` is called for ticket after ticket, never out of order, and only
    for a closed ticket whose futures all succeeded. The first failed future (an
    exception or a cancellation) stops the acker for good: `on_failed(item, exc)` is
    called once, at once, for the ticket that held it, and from then on nothing is
    reported, not even earlier tickets that succeed later (their inputs are processed
    again after a restart: at least once, never lost).
    """

    def __init__(
        self,
        on_delivered: Callable[[Item], None],
        on_failed: Callable[[Item, BaseException], None] | None = None,
    ) -> None:
        self._on_delivered = on_delivered
        self._on_failed = on_failed
        self._tickets: collections.deque[Ticket[Item]] = collections.deque()
        self._changed = asyncio.Event()
        self.failure: BaseException | None = None

    def open(self, item: Item) -> Ticket[Item]:
        """A ticket for the next input message, behind every ticket opened before."""
        ticket = Ticket(self, item)
        self._tickets.append(ticket)
        return ticket

    def __len__(self) -> int:
        """Tickets opened and not yet reported."""
        return len(self._tickets)

    @property
    def failed(self) -> bool:
        """A delivery failed: nothing will be reported any more."""
        return self.failure is not None

    async def wait_below(self, limit: int) -> None:
        """Wait until fewer than `limit` tickets are unreported (returns at once after a failure)."""
        while len(self._tickets) >= limit and self.failure is None:
            self._changed.clear()
            await self._changed.wait()

    async def drained(self) -> None:
        """Wait until every ticket opened so far is reported (or the acker failed)."""
        await self.wait_below(1)

    def _advance(self) -> None:
        tickets = self._tickets
        reported = False
        while self.failure is None and tickets and tickets[0].complete:
            ticket = tickets.popleft()
            reported = True
            self._on_delivered(ticket.item)
        if reported:
            self._changed.set()

    def _fail(self, ticket: Ticket[Item], exc: BaseException) -> None:
        if self.failure is not None:
            return
        self.failure = exc
        self._changed.set()
        if self._on_failed is not None:
            self._on_failed(ticket.item, exc)


def hold_message(event: Any) -> Any:
    """Take a reference on a Faust event's message, so the stream's own ack is not final."""
    event.message.incref()
    return event


def release_message(sensors: Any) -> Callable[[Any], None]:
    """An `on_delivered` that drops the held reference; the final ack lets Faust commit it.

    `sensors` is `app.sensors`: Faust's stream calls `on_message_out` on a final ack, and
    so must we when ours is the final one (as `streams.app.in_order` does).
    """

    def release(event: Any) -> None:
        if event.ack():
            msg = event.message
            sensors.on_message_out(msg.tp, msg.offset, msg)

    return release
