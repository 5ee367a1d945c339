"""`frwatch publish`: the command's shell around LinePublisher (checks, messages, summary)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

import orjson

from streams.archive import ArchiveError
from streams.cli.publish import LinePublisher, PublishOutcome, new_producer
from streams.cli.publish_feed import LineFeed, MessageSource
from streams.cli.publish_lines import (
    LineIndex,
    LineLedger,
    MessageBuilder,
    Outgoing,
    numbered_lines,
)
from streams.cli.publish_resume import lines_on_topic
from streams.kafkaio import KafkaAccessError, check_login, check_topics, client_kwargs, refused
from streams.settings import Settings

EXIT_FAILED = 2
REFUSED_SHOWN = 100  # line numbers listed in the summary; the count covers them all


class PublishProgress:
    """Lines sent so far on a terminal, at most a few times a second (silent otherwise)."""

    def __init__(self, stream: TextIO, ledger: LineLedger, clock: Callable[[], float]) -> None:
        self.stream = stream
        self.ledger = ledger
        self.enabled = stream.isatty()
        self._clock = clock
        self.started = clock()
        self.next_at = self.started + 0.5

    def tick(self) -> None:
        """Redraw the status line when it is due."""
        now = self._clock()
        if not self.enabled or now < self.next_at:
            return
        self.next_at = now + 0.5
        rate = self.ledger.sent / max(now - self.started, 1e-9)
        self.stream.write(
            f"\rpublish: {self.ledger.sent:,} lines sent ({rate:,.0f}/s), "
            f"{len(self.ledger.refused):,} refused, line {self.ledger.last_read:,} read"
        )
        self.stream.flush()

    def done(self) -> None:
        """Clear the status line."""
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def stderr_progress(ledger: LineLedger) -> PublishProgress:
    """Progress on stderr."""
    return PublishProgress(sys.stderr, ledger, time.monotonic)


def _fail(message: str) -> int:
    print(f"frwatch publish: error: {message}", file=sys.stderr)
    return EXIT_FAILED


def publish_archives(args: argparse.Namespace, settings: Settings) -> int:
    """Publish the archives from line `--from-line`; exit 0, or 2 with one line saying how far
    it got (or naming the refused lines)."""
    started = time.perf_counter()
    topic = args.topic or settings.topic_requests
    from_line = args.from_line or 1
    index = LineIndex()
    ledger = LineLedger()
    try:
        lines = numbered_lines(args.archives, index)
    except (ArchiveError, ValueError) as exc:
        return _fail(str(exc))
    progress = stderr_progress(ledger)

    def on_refused(msg: Outgoing, exc: BaseException) -> None:
        progress.done()
        for n in msg.lines:
            where = index.where(n)
            print(
                f"frwatch publish: line {n}{f' ({where})' if where else ''}: refused by Kafka "
                f"({type(exc).__name__}: a {len(msg.value):,}-byte message is over Kafka's "
                "limit); not sent",
                file=sys.stderr,
            )

    publisher = LinePublisher(
        topic,
        ledger,
        lambda: new_producer(settings.bootstrap_servers, client_kwargs(settings)),
        give_up_s=args.give_up_after,
        on_refused=on_refused,
        progress=progress.tick,
    )
    feed = LineFeed(line for line in lines if line.number >= from_line)
    source = MessageSource(feed, MessageBuilder(args.batch, ledger))

    async def checked() -> PublishOutcome:
        # aiokafka's warnings (a retry per batch while the broker is away) would bury the
        # one line that says how far publish got
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        await check_login(settings)
        await check_topics(settings, [topic], hidden_too=False)
        if args.from_line is not None:
            publisher.already = await lines_on_topic(settings, topic, from_line)
        feed.start(publisher.wake)
        try:
            return await publisher.run(source)
        finally:
            feed.stop()

    try:
        outcome = asyncio.run(checked())
    except KafkaAccessError as exc:
        progress.done()
        if ledger.last_read == 0:
            return _fail(str(exc))
        outcome = PublishOutcome(publisher.acked, str(exc))
    except ArchiveError as exc:  # a read error in the middle of an archive
        outcome = PublishOutcome(publisher.acked, str(exc))
    progress.done()
    if outcome.error is not None:
        return _fail(_how_far(outcome.error, outcome.cause, ledger, index, from_line, topic))
    print(
        orjson.dumps(
            {
                "topic": topic,
                "messages": outcome.messages,
                "lines": ledger.sent,
                "refused": len(ledger.refused),
                "refused_lines": ledger.refused[:REFUSED_SHOWN],
                "already_on_topic": publisher.already_there,
                "from_line": from_line,
                "last_line": ledger.last_read,
                "seconds": round(time.perf_counter() - started, 3),
            }
        ).decode(),
        file=sys.stderr,
    )
    return EXIT_FAILED if ledger.refused else 0


def _how_far(
    error: str,
    cause: BaseException | None,
    ledger: LineLedger,
    index: LineIndex,
    from_line: int,
    topic: str,
) -> str:
    """The one failure line: why, lines sent, the first line not sent and how to resume."""
    acl = (refused(cause, f"write topic {topic}") if cause else None) or error
    first = ledger.first_not_sent()
    if first is None:
        first = max(from_line, ledger.last_read + 1)
    where = index.where(first) if first <= ledger.last_read else None
    text = (
        f"{acl}; {ledger.sent} lines sent, first line not sent: {first}"
        f"{f' ({where})' if where else ''}; resume with --from-line {first}"
    )
    again = ledger.sent_after(first)
    if again:
        text += f" ({again} lines after it were sent too: the resume finds them on the topic)"
    if ledger.refused:
        shown = ", ".join(map(str, ledger.refused[:10]))
        more = ", ..." if len(ledger.refused) > 10 else ""
        text += f"; {len(ledger.refused)} lines refused by Kafka: {shown}{more}"
    return text
