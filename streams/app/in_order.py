"""Ingest with screening elsewhere: messages routed and acked in the order they came.

No Faust import: the ingest agent (`streams.app.faust_app`) hands over its stream's events
and what to do with each; the unit tests hand over stand-ins with Faust's reference counting.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

from streams.app.routing import Screened
from streams.app.screening import ScreeningUnavailable

Screening = asyncio.Future[Screened]


class SettlerStopped(Exception):
    """The task that routes and acks the messages in flight stopped: they will never be acked."""


async def ingest_in_order(
    events: AsyncIterable[Any],
    submit: Callable[[bytes, int], Screening],
    ingest_one: Callable[[Any, Screening | None, int], Awaitable[None]],
    on_final_ack: Callable[[Any], None],
    on_settler_stopped: Callable[[BaseException], None],
    clock: Callable[[], int],
    limit_bytes: int,
    elsewhere_bytes: int,
) -> None:
    """Screen large messages elsewhere while earlier ones are routed; ack in order.

    `events` acks each message when the next one is asked for (Faust's stream). A message
    handed to the settler holds one more reference (`message.incref()`), which the settler
    drops once `ingest_one` has routed and delivered it: only then is it acked, always after
    the ones before it, so an offset commit never passes a message still being screened or
    routed. A message under `elsewhere_bytes` with nothing ahead of it is routed right here
    and acked by the stream alone; one behind others waits its turn and is screened here.
    At most `limit_bytes` of messages are in flight. If the settler stops (`ingest_one`
    raised), the messages in flight are never acked: `on_settler_stopped` is told at once,
    and the next message raises SettlerStopped instead of being routed.
    """
    in_flight: collections.deque[tuple[Any, Screening | None, int]] = collections.deque()
    held = 0  # bytes of the messages in in_flight
    arrived = asyncio.Event()  # in_flight has a message for the settler
    room = asyncio.Event()  # in_flight is below its limit, or the settler stopped

    async def settle() -> None:
        nonlocal held
        try:
            while True:
                while not in_flight:
                    arrived.clear()
                    await arrived.wait()
                event, screening, at_ms = in_flight[0]
                msg = event.message
                await ingest_one(msg, screening, at_ms)
                if event.ack():  # the last reference: the message may be committed
                    on_final_ack(msg)
                in_flight.popleft()
                held -= len(msg.value) if msg.value is not None else 0
                room.set()
        except Exception as exc:
            on_settler_stopped(exc)
            raise
        finally:
            room.set()

    settler = asyncio.ensure_future(settle())
    try:
        async for event in events:
            msg = event.message
            at_ms = clock()
            value = msg.value
            small = value is None or len(value) < elsewhere_bytes
            if small and not in_flight:
                await ingest_one(msg, None, at_ms)  # as without screening processes
                continue
            screening: Screening | None = None
            if not small:
                # none left running: screened here when its turn comes
                with contextlib.suppress(ScreeningUnavailable):
                    screening = submit(value, at_ms)
            msg.incref()  # the settler's reference
            in_flight.append((event, screening, at_ms))
            held += len(value) if value is not None else 0
            arrived.set()
            while held >= limit_bytes and not settler.done():
                room.clear()
                await room.wait()
            if settler.done():
                raise SettlerStopped("the ingest settler stopped") from settler.exception()
    finally:
        settler.cancel()
        with contextlib.suppress(BaseException):
            await settler
