"""`streams.app.delivery.Delivery` against the real broker: restarts, refusals, stopping.

The restart test runs a private broker (stopped and started again with its data, ports
and cluster id, as an operator's restart would); the refusal test uses the session
broker with a topic of its own.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from kafka_broker import (
    broker_log_tail,
    start_broker,
    start_broker_again,
    stop_broker,
    stop_broker_keeping_data,
)
from prometheus_client import CollectorRegistry

from streams.app.delivery import Delivery, DeliveryStopped, delivery_failures_counter, is_permanent
from streams.app.tickets import InputAcker

pytestmark = pytest.mark.integration

PARTITIONS = 3
RESTARTS = 3
DOWN_S = float(os.environ.get("FRWATCH_TEST_DOWN_S", "40"))
SEND_EVERY_S = 0.02  # a steady 50 records/s
RESUME_WITHIN_S = 60.0  # every record acknowledged this long after the broker's return


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    run_dir = tmp_path_factory.mktemp("delivery-broker")
    try:
        yield run_dir, start_broker(run_dir)
    finally:
        stop_broker(run_dir)


async def create_topic(bootstrap: str, topic: str, partitions: int, **config: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=config)])
        assert all(err[1] == 0 for err in response.topic_errors), response.topic_errors
        deadline = time.monotonic() + 30
        while True:
            (meta,) = await admin.describe_topics([topic])
            parts = meta["partitions"]
            ready = meta["error_code"] == 0 and len(parts) == partitions
            if ready and all(p["leader"] >= 0 for p in parts):
                return
            assert time.monotonic() < deadline, meta
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def read_all(
    bootstrap: str, topic: str, partitions: int
) -> dict[int, list[tuple[int, bytes]]]:
    """Every committed record of the topic: partition -> [(offset, value)]."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: dict[int, list[tuple[int, bytes]]] = {tp.partition: [] for tp in tps}
        deadline = time.monotonic() + 60
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, "could not read the topic back"
            batches = await consumer.getmany(timeout_ms=500)
            for tp, msgs in batches.items():
                out[tp.partition].extend((m.offset, m.value) for m in msgs)
        return out
    finally:
        await consumer.stop()


def new_delivery(bootstrap: str, registry: CollectorRegistry, fatal: list[Any]) -> Delivery:
    return Delivery(
        [bootstrap],
        on_fatal=lambda topic, exc: fatal.append((topic, exc)),
        failures=delivery_failures_counter(registry),
        flush_timeout_s=3.0,
        close_timeout_s=2.0,
    )


def test_a_refused_write_stops_delivery_and_nothing_after_it_is_reported(
    kafka_bootstrap: str, unique_name: str
) -> None:
    async def main() -> None:
        topic = f"{unique_name}-small"
        await create_topic(kafka_bootstrap, topic, 1, **{"max.message.bytes": "300"})
        registry = CollectorRegistry()
        fatal: list[tuple[str, BaseException]] = []
        svc = new_delivery(kafka_bootstrap, registry, fatal)
        delivered: list[int] = []
        failed: list[tuple[int, BaseException]] = []
        acker: InputAcker[int] = InputAcker(delivered.append, lambda i, e: failed.append((i, e)))
        await svc.start()
        try:
            inputs: list[list[asyncio.Future[Any]]] = []

            def handle(i: int, values: list[bytes]) -> None:
                ticket = acker.open(i)
                futs = [svc.send(topic, v, key=b"k") for v in values]
                for f in futs:
                    ticket.add(f)
                ticket.close()
                inputs.append(futs)

            handle(0, [b"small-0"])
            handle(1, [b"small-1a", b"small-1b"])
            await asyncio.wait_for(acker.drained(), 30)
            assert delivered == [0, 1]
            handle(2, [b"small-2", b"x" * 1000])  # over max.message.bytes
            handle(3, [b"small-3"])
            handle(4, [])
            await asyncio.wait([f for futs in inputs for f in futs], timeout=30)
            # Kafka refuses the batch as a whole: the small record sent with the big one is
            # refused with it (one future carries Kafka's error, the others DeliveryStopped)
            errors = [f.exception() for futs in inputs[2:] for f in futs]
            assert all(e is not None for e in errors), "a future after the refusal resolved"
            refusals = [e for e in errors if not isinstance(e, DeliveryStopped)]
            assert len(refusals) == 1 and is_permanent(refusals[0]), errors
            assert delivered == [0, 1], "nothing after the refused write is reported delivered"
            assert [i for i, _ in failed] == [2]
            assert [t for t, _ in fatal] == [topic]
            assert (
                registry.get_sample_value("frwatch_delivery_failures_total", {"topic": topic})
                == 1.0
            )
            with pytest.raises(DeliveryStopped):
                await svc.send(topic, b"later")
            print(f"refusal: {refusals[0]!r}")
        finally:
            t0 = time.monotonic()
            await svc.stop()
            assert time.monotonic() - t0 < 10
        log = await read_all(kafka_bootstrap, topic, 1)
        assert [v for _, v in log[0]][:3] == [b"small-0", b"small-1a", b"small-1b"]
        assert b"x" * 1000 not in [v for _, v in log[0]]

    asyncio.run(main())


def test_stop_is_bounded_while_the_broker_is_down(
    private_broker: tuple[Path, str], unique_name: str
) -> None:
    run_dir, bootstrap = private_broker

    async def main() -> None:
        topic = f"{unique_name}-stop"
        await create_topic(bootstrap, topic, PARTITIONS)
        registry = CollectorRegistry()
        fatal: list[Any] = []
        svc = new_delivery(bootstrap, registry, fatal)
        await svc.start()
        first = [svc.send(topic, b"%d" % i, partition=i % PARTITIONS) for i in range(10)]
        await asyncio.wait_for(asyncio.gather(*first), 30)
        argv = await asyncio.to_thread(stop_broker_keeping_data, run_dir)
        try:
            later = [svc.send(topic, b"later-%d" % i) for i in range(10)]
            await asyncio.sleep(2)
            t0 = time.monotonic()
            await svc.stop()  # flush 3 s + close 2 s at most
            took = time.monotonic() - t0
            print(f"stop() with the broker down took {took:.2f}s")
            assert took < 3.0 + 2.0 + 3.0
            for f in later:
                assert isinstance(f.exception(), DeliveryStopped)
            assert fatal == []
        finally:
            await asyncio.to_thread(start_broker_again, run_dir, argv)

        # a broker that never answered at all
        svc = new_delivery("127.0.0.1:1", CollectorRegistry(), fatal)
        await svc.start()
        never = svc.send(topic, b"never")
        await asyncio.sleep(1)
        t0 = time.monotonic()
        await svc.stop()
        took = time.monotonic() - t0
        print(f"stop() with no broker ever took {took:.2f}s")
        assert took < 8.0
        assert isinstance(never.exception(), DeliveryStopped)

    asyncio.run(main())


def test_three_broker_restarts_lose_nothing_reorder_nothing_duplicate_nothing(
    private_broker: tuple[Path, str], unique_name: str
) -> None:
    run_dir, bootstrap = private_broker

    async def main() -> None:
        topic = f"{unique_name}-restarts"
        await create_topic(bootstrap, topic, PARTITIONS)
        registry = CollectorRegistry()
        fatal: list[Any] = []
        svc = new_delivery(bootstrap, registry, fatal)
        await svc.start()
        sent: list[tuple[bytes, int, asyncio.Future[Any]]] = []
        resolved_at: dict[int, float] = {}
        down: list[tuple[float, float]] = []  # (stopped, started again) in monotonic time
        stop_sending = asyncio.Event()

        async def steady() -> None:
            i = 0
            while not stop_sending.is_set():
                value = b"%08d" % i
                fut = svc.send(topic, value, key=b"%d" % (i % 7), partition=i % PARTITIONS)
                fut.add_done_callback(lambda _f, i=i: resolved_at.setdefault(i, time.monotonic()))
                sent.append((value, i % PARTITIONS, fut))
                i += 1
                await asyncio.sleep(SEND_EVERY_S)

        sender = asyncio.ensure_future(steady())
        try:
            for _ in range(RESTARTS):
                await asyncio.sleep(5)
                argv = await asyncio.to_thread(stop_broker_keeping_data, run_dir)
                stopped = time.monotonic()
                await asyncio.sleep(DOWN_S)
                await asyncio.to_thread(start_broker_again, run_dir, argv)
                back = time.monotonic()
                down.append((stopped, back))
            await asyncio.sleep(5)
        finally:
            stop_sending.set()
            await sender
        try:
            await asyncio.wait_for(asyncio.gather(*(f for _, _, f in sent)), RESUME_WITHIN_S)
        except TimeoutError:
            pytest.fail(
                f"{sum(not f.done() for _, _, f in sent)} of {len(sent)} unacknowledged; "
                f"broker log:\n{broker_log_tail(run_dir)}"
            )
        finally:
            await svc.stop()
        assert fatal == []
        # no future resolved while the broker was away
        for i, at in resolved_at.items():
            for stopped, back in down:
                assert not (stopped + 2.0 < at < back), f"record {i} resolved while down"
        # from the broker's return to the first acknowledgement after it
        resumed = [
            min(t for t in resolved_at.values() if t > stopped) - back for stopped, back in down
        ]
        log = await read_all(bootstrap, topic, PARTITIONS)
        print(
            f"sent {len(sent)} records through {RESTARTS} restarts of {DOWN_S:.0f}s; "
            f"producers started {svc.producers_started}; first ack after each return "
            f"{', '.join(f'{s:.1f}s' for s in resumed)}"
        )
        for partition in range(PARTITIONS):
            expected = [v for v, p, _ in sent if p == partition]
            values = [v for _, v in log[partition]]
            assert len(values) == len(set(values)), f"duplicates in partition {partition}"
            assert values == expected, f"partition {partition}: lost or reordered records"
        # each acknowledgement names the record's place in the log
        at = {(p, off): v for p, recs in log.items() for off, v in recs}
        for value, partition, fut in sent:
            meta = fut.result()
            assert meta.partition == partition
            if meta.offset >= 0:  # a duplicate-sequence ack carries no offset
                assert at[(partition, meta.offset)] == value

    asyncio.run(main())
