"""Small aiokafka helpers shared by the worker's feed, the CLI and the benchmark."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka_config import (
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    KafkaClientConfig,
    load_kafka_config,
)
from streams.settings import Settings

# one parse (and one TLS context) per file and password override, for every client
_loaded: dict[tuple[str | None, str | None, str | None], KafkaClientConfig] = {}


def kafka_client_config(settings: Settings) -> KafkaClientConfig:
    """The checked client configuration of FRWATCH_KAFKA_CONFIG (raises KafkaConfigError)."""
    key = (settings.kafka_config, os.environ.get(PASSWORD_ENV), os.environ.get(PASSWORD_FILE_ENV))
    if key not in _loaded:
        _loaded[key] = load_kafka_config(settings.kafka_config)
    return _loaded[key]


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Security keyword arguments for every aiokafka client frwatch creates."""
    return kafka_client_config(settings).aiokafka_kwargs()


def faust_kwargs(settings: Settings) -> dict[str, Any]:
    """Security keyword arguments for the Faust app (`broker_credentials`)."""
    return kafka_client_config(settings).faust_kwargs()


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
