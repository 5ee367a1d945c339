"""`frwatch publish`'s input: archive lines read in a thread of their own, and the messages
built from what has been read so far."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Callable, Iterator

from streams.cli.publish_lines import ArchiveLine, MessageBuilder, Outgoing


class LineFeed:
    """Reads archive lines in a thread of its own, so that an input that waits (a pipe on
    stdin) never holds up the event loop that sends and acknowledges the lines before."""

    def __init__(self, lines: Iterator[ArchiveLine], limit: int = 10_000) -> None:
        self._lines = lines
        self._limit = limit
        self.ready: collections.deque[ArchiveLine] = collections.deque()
        self.done = False  # set after the last line is in `ready`
        self.error: BaseException | None = None
        self._stop = threading.Event()

    def start(self, wake: Callable[[], None]) -> None:
        """Start reading; `wake` is called (in the loop) when lines arrive or input ends."""
        loop = asyncio.get_running_loop()

        def poke() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(wake)

        def read() -> None:
            try:
                for line in self._lines:
                    while len(self.ready) >= self._limit:
                        if self._stop.wait(0.005):
                            return
                    was_empty = not self.ready
                    self.ready.append(line)
                    if was_empty:
                        poke()
                    if self._stop.is_set():
                        return
            except BaseException as exc:  # handed to the loop, which reports it
                self.error = exc
            finally:
                self.done = True
                poke()

        threading.Thread(target=read, name="frwatch-publish-read", daemon=True).start()

    def stop(self) -> None:
        """Stop reading (a thread blocked on a pipe ends with the process)."""
        self._stop.set()


class MessageSource:
    """Messages built from the lines a LineFeed has read so far (never waits)."""

    def __init__(self, feed: LineFeed, builder: MessageBuilder) -> None:
        self.feed = feed
        self.builder = builder
        self._ready: collections.deque[Outgoing] = collections.deque()
        self._finished = False

    def take(self) -> Outgoing | None:
        """The next message, or None when there is none yet (or no more: see `exhausted`)."""
        feed = self.feed
        while not self._ready:
            if feed.ready:
                self._ready.extend(self.builder.add(feed.ready.popleft()))
                continue
            if feed.error is not None:
                raise feed.error
            if not feed.done or self._finished:
                return None
            if feed.ready:  # `done` is set after the last line is in: read it first
                continue
            self._finished = True
            self._ready.extend(self.builder.finish())
        return self._ready.popleft()

    @property
    def exhausted(self) -> bool:
        """Every line was read and every message taken."""
        return self._finished and not self._ready
