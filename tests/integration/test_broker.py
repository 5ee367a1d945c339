"""Smoke tests against the real local Kafka 4.x broker (see deploy/kafka/broker).

They check that the broker recipe works and that the clients we rely on speak
its protocol: aiokafka 0.14 (admin, producer with acks=all, consumer group with
offset commits) and Debian's kcat (librdkafka).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from kafka_broker import BrokerError, broker_script, start_broker, stop_broker

pytestmark = pytest.mark.integration

N_MESSAGES = 100
PARTITIONS = 3
TIMEOUT_S = 30.0


async def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name=topic, num_partitions=partitions, replication_factor=1)]
        )
        # topic_errors: (topic, error_code, error_message)
        errors = [err for err in response.topic_errors if err[1] != 0]
        assert not errors, f"CreateTopics failed: {errors}"
        # Wait until the topic's partitions all have a leader in the metadata.
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            (meta,) = await admin.describe_topics([topic])
            ready = (
                meta["error_code"] == 0
                and len(meta["partitions"]) == partitions
                and all(p["leader"] >= 0 for p in meta["partitions"])
            )
            if ready:
                return
            assert time.monotonic() < deadline, f"topic {topic} not ready: {meta}"
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def _produce(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]
) -> list[tuple[int, int]]:
    """Send (key, value) records with acks=all; return their (partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, key=key, value=value) for key, value in records]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metadata]


# aiokafka ships no type hints; consumed messages are aiokafka.structs.ConsumerRecord.
Record = Any


async def _consume(bootstrap: str, topic: str, group: str, expected: int) -> list[Record]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        messages: list[Record] = []
        deadline = time.monotonic() + TIMEOUT_S
        while len(messages) < expected:
            assert time.monotonic() < deadline, f"only {len(messages)}/{expected} messages consumed"
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                messages.extend(batch)
        # Exercise the group coordinator too (OffsetCommit/OffsetFetch, as Faust does).
        await consumer.commit()
        committed = {}
        for tp in consumer.assignment():
            committed[tp.partition] = await consumer.committed(tp)
        end_offsets = await consumer.end_offsets(list(consumer.assignment()))
    finally:
        await consumer.stop()
    assert committed == {tp.partition: off for tp, off in end_offsets.items()}
    return messages


def test_aiokafka_round_trip(kafka_bootstrap: str, unique_name: str) -> None:
    topic, group = unique_name, f"{unique_name}-g"
    records = [(f"key-{i % 10}".encode(), f"value-{i}".encode()) for i in range(N_MESSAGES)]

    async def scenario() -> tuple[list[tuple[int, int]], list[Record]]:
        await _create_topic(kafka_bootstrap, topic, PARTITIONS)
        placed = await _produce(kafka_bootstrap, topic, records)
        consumed = await _consume(kafka_bootstrap, topic, group, N_MESSAGES)
        return placed, consumed

    placed, consumed = asyncio.run(scenario())

    assert len(placed) == N_MESSAGES
    # The 10 distinct keys should spread over all partitions.
    assert {partition for partition, _ in placed} == set(range(PARTITIONS))
    assert len(consumed) == N_MESSAGES
    assert sorted((m.key, m.value) for m in consumed) == sorted(records)
    assert all(m.topic == topic for m in consumed)
    # Each consumed record sits exactly where the producer was told it went.
    where = {(m.partition, m.offset): (m.key, m.value) for m in consumed}
    assert {pos: rec for pos, rec in zip(placed, records, strict=True)} == where
    # Per-key order is preserved (same key -> same partition, increasing offsets).
    by_key: dict[bytes, list[bytes]] = defaultdict(list)
    for m in sorted(consumed, key=lambda m: (m.partition, m.offset)):
        by_key[m.key].append(m.value)
    for key, values in by_key.items():
        assert values == [v for k, v in records if k == key]


def _kcat(*args: str) -> subprocess.CompletedProcess[str]:
    kcat = shutil.which("kcat")
    assert kcat, "kcat not found on PATH (Debian: apt-get install kcat)"
    proc = subprocess.run(
        [kcat, *args], capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert proc.returncode == 0, f"kcat {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
    return proc


def test_kcat_metadata_and_consume(kafka_bootstrap: str, unique_name: str) -> None:
    listing = _kcat("-L", "-b", kafka_bootstrap).stdout
    broker_lines = [
        line.strip() for line in listing.splitlines() if line.strip().startswith("broker ")
    ]
    assert " 1 brokers:" in listing, listing
    assert len(broker_lines) == 1, listing
    assert broker_lines[0].startswith(f"broker 1 at {kafka_bootstrap}"), listing

    values = [f"kcat-{i}" for i in range(N_MESSAGES)]
    asyncio.run(_create_topic(kafka_bootstrap, unique_name, PARTITIONS))
    records = [(f"k{i}".encode(), v.encode()) for i, v in enumerate(values)]
    asyncio.run(_produce(kafka_bootstrap, unique_name, records))

    out = _kcat("-C", "-b", kafka_bootstrap, "-t", unique_name, "-e", "-q").stdout
    assert sorted(out.splitlines()) == sorted(values)


def test_kcat_produce_aiokafka_consume(kafka_bootstrap: str, unique_name: str) -> None:
    values = [f"from-kcat-{i}" for i in range(20)]
    kcat = shutil.which("kcat")
    assert kcat, "kcat not found on PATH (Debian: apt-get install kcat)"

    def kcat_produce() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                kcat,
                "-P",
                "-b",
                kafka_bootstrap,
                "-t",
                unique_name,
                "-X",
                "allow.auto.create.topics=true",
                "-X",
                "message.timeout.ms=5000",
            ],
            input="\n".join(values) + "\n",
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )

    # the broker creates no topic on a producer's request (auto.create.topics.enable=false)
    refused = kcat_produce()
    assert refused.returncode != 0, refused.stderr
    assert asyncio.run(_topic_names(kafka_bootstrap)).isdisjoint({unique_name})

    asyncio.run(_create_topic(kafka_bootstrap, unique_name, 1))
    proc = kcat_produce()
    assert proc.returncode == 0, f"kcat -P failed ({proc.returncode}):\n{proc.stderr}"

    consumed = asyncio.run(_consume(kafka_bootstrap, unique_name, f"{unique_name}-g", len(values)))
    assert [m.value.decode() for m in sorted(consumed, key=lambda m: m.offset)] == values
    assert {m.partition for m in consumed} == {0}


async def _topic_names(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def test_broker_down_up_keeps_data_and_fresh_or_clean_wipes_it(tmp_path: Path) -> None:
    """`deploy/kafka/broker down` then `up` on one run dir: topics keep their partitions and
    messages (and their committed offsets); `up --fresh` and `clean` start from nothing."""
    run_dir = tmp_path / "broker"
    bootstrap = start_broker(run_dir)
    try:
        records = [(f"k{i % 7}".encode(), f"v{i}".encode()) for i in range(200)]
        asyncio.run(_create_topic(bootstrap, "kept", PARTITIONS))
        placed = asyncio.run(_produce(bootstrap, "kept", records))
        broker_script(run_dir, "down")
        assert broker_script(run_dir, "up").strip().splitlines()[-1] == bootstrap
        asyncio.run(_wait_leaders(bootstrap, "kept", PARTITIONS))
        consumed = asyncio.run(_consume(bootstrap, "kept", "g-kept", len(records)))
        assert {(m.partition, m.offset): (m.key, m.value) for m in consumed} == dict(
            zip(placed, records, strict=True)
        )
        # the group's committed offsets survived too: a second round reads nothing new
        asyncio.run(_produce(bootstrap, "kept", records[:1]))
        broker_script(run_dir, "down")
        broker_script(run_dir, "up")
        asyncio.run(_wait_leaders(bootstrap, "kept", PARTITIONS))
        again = asyncio.run(_consume(bootstrap, "kept", "g-kept", 1))
        assert [(m.key, m.value) for m in again] == records[:1]

        broker_script(run_dir, "up", "--fresh")  # running: reused, nothing wiped
        assert "kept" in asyncio.run(_topic_names(bootstrap))
        broker_script(run_dir, "down")
        broker_script(run_dir, "up", "--fresh")
        assert "kept" not in asyncio.run(_topic_names(bootstrap))
        asyncio.run(_create_topic(bootstrap, "gone", 1))
        with pytest.raises(BrokerError, match="running"):
            broker_script(run_dir, "clean")
        broker_script(run_dir, "down")
        broker_script(run_dir, "clean")
        assert not (run_dir / "data").exists()
        broker_script(run_dir, "up")
        assert "gone" not in asyncio.run(_topic_names(bootstrap))
    finally:
        stop_broker(run_dir)


async def _wait_leaders(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            (meta,) = await admin.describe_topics([topic])
            parts = meta["partitions"]
            if len(parts) == partitions and all(p["leader"] >= 0 for p in parts):
                return
            assert time.monotonic() < deadline, f"topic {topic} not back: {meta}"
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
