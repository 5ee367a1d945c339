"""What a stopped `frwatch publish` left on the topic after its first line not sent.

Kafka keeps order per partition, not across them: when a broker goes away, a later line on
one partition may be acknowledged while an earlier line on another is not. So the line
that a stopped publish names as the first not sent may be followed on the topic by some
later lines. Every message publish sends carries its archive line number in a header; a
resume (`--from-line N`) reads the topic's tail back, per partition, to the first message
of a line before N, and does not send again a line that is there with the same bytes.
"""

from __future__ import annotations

import hashlib

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafkaio import client_kwargs, topic_partitions
from streams.settings import Settings

LINE_HEADER = "frwatch.line"
CHUNK = 5_000  # messages read back at a time, per partition
SCAN_LIMIT = 200_000  # messages read back at most, per partition


def line_header(number: int) -> tuple[str, bytes]:
    """The header that names a message's archive line."""
    return (LINE_HEADER, str(number).encode())


def digest(value: bytes) -> bytes:
    """What a resume compares: the line's bytes, hashed."""
    return hashlib.blake2b(value, digest_size=16).digest()


def _line_of(headers: object) -> int | None:
    for name, value in headers or ():  # type: ignore[attr-defined]
        if name == LINE_HEADER:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


async def lines_on_topic(
    settings: Settings, topic: str, from_line: int, timeout: float = 20.0
) -> dict[int, bytes]:
    """Line number -> digest of the lines >= from_line that publish already put on the
    topic's tail (the tail of each partition back to a line before from_line)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        client_id="frwatch-publish-resume",
        **client_kwargs(settings),
    )
    await consumer.start()
    found: dict[int, bytes] = {}
    try:
        for tp in await topic_partitions(consumer, topic, timeout):
            await _scan_back(consumer, tp, from_line, found)
    finally:
        await consumer.stop()
    return found


async def _scan_back(
    consumer: AIOKafkaConsumer, tp: TopicPartition, from_line: int, found: dict[int, bytes]
) -> None:
    consumer.assign([tp])
    begin = (await consumer.beginning_offsets([tp]))[tp]
    hi = (await consumer.end_offsets([tp]))[tp]
    floor = max(begin, hi - SCAN_LIMIT)
    while hi > floor:
        lo = max(floor, hi - CHUNK)
        consumer.seek(tp, lo)
        before = False
        pos, empty = lo, 0
        while pos < hi and empty < 5:  # offsets without records (markers) end it too
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=CHUNK)
            records = batch.get(tp, [])
            if not records:
                pos, empty = await consumer.position(tp), empty + 1
                continue
            for rec in records:
                if rec.offset >= hi:
                    break
                line = _line_of(rec.headers)
                if line is None:
                    continue
                if line < from_line:
                    before = True
                elif rec.value is not None:
                    found[line] = digest(rec.value)
            pos = records[-1].offset + 1
        if before:
            return  # this partition's lines before it are older than the resume point
        hi = lo
