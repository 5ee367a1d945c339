"""Small aiokafka helpers shared by the worker's feed, the CLI and the benchmark."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition


async def topic_partitions(
    consumer: AIOKafkaConsumer, topic: str, timeout: float = 60.0
) -> list[TopicPartition]:
    """The topic's partitions, refreshing metadata until the topic is known or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic!r} not found within {timeout:.0f}s")
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.2)


async def assign_from_beginning(
    consumer: AIOKafkaConsumer, topic: str, timeout: float = 60.0
) -> dict[TopicPartition, int]:
    """Assign every partition, seek to the beginning; returns the current end offsets."""
    tps = await topic_partitions(consumer, topic, timeout)
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return dict(await consumer.end_offsets(tps))
