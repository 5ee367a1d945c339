"""Faults and hostile input on a real broker (issue 14): refused writes, poison messages,
broker restarts under load. Traffic is published before the worker starts (the hard order).
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from kafka_broker import start_broker, start_broker_again, stop_broker, stop_broker_keeping_data
from scenarios import write_jsonl
from worker_harness import (
    REPO,
    Worker,
    alert_ids_on_topic,
    committed_offsets,
    frwatch,
    prepared_topics,
    read_topic,
    replay_alerts,
    wait_for,
    wait_for_alerts,
)

from topics.catalog import detect_topic_name
from topics.requests import parse_event_time

pytestmark = pytest.mark.integration

KAFKA_DEFAULT_MAX_MESSAGE_BYTES = "1048588"
REFUSING = "100"  # max.message.bytes below any forward or dead letter (with its batch header)
RAW_LIMIT_BYTES = 64 * 1024  # SPEC 2.3: raw holds at most 64 KiB of the original
# JSON writes a control character as \u00XX: six bytes of letter per byte of raw at worst
LETTER_LIMIT_BYTES = 6 * RAW_LIMIT_BYTES + 4096


async def _set_max_message_bytes(bootstrap: str, topic: str, value: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": value})
        await admin.alter_configs([resource])
    finally:
        await admin.close()


def _exit_code(worker: Worker, timeout: float) -> int:
    assert worker.proc is not None
    try:
        return worker.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker did not stop:\n{worker.log_tail(40)}") from None


def _letter_positions(bootstrap: str, env: dict[str, str]) -> set[tuple[int, int, str]]:
    """Where each dead letter of an input record came from (a batch has several at one offset)."""
    return {
        (d["partition"], d["offset"], d["raw"])
        for _, v in read_topic(bootstrap, env["FRWATCH_TOPIC_DLQ"])
        if v and (d := orjson.loads(v))["topic"] == env["FRWATCH_TOPIC_REQUESTS"]
    }


@pytest.mark.parametrize("refusing", ["detect", "dlq"])
def test_a_topic_refusing_writes_stops_the_worker_and_a_restart_loses_nothing(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, refusing: str
) -> None:
    """A permanent refusal: exit 1 naming the topic, nothing committed past; then all of it."""
    env, accounts, events = prepared_topics(kafka_bootstrap, unique_name, tmp_path)
    frwatch(["publish", str(events)], env)
    total = len(events.read_bytes().splitlines())
    want, summary = replay_alerts(events, accounts, env)
    want_ids = {a["alert_id"] for a in want}
    assert len(want_ids) >= 8
    topic = (
        detect_topic_name(env["FRWATCH_APP_ID"])
        if refusing == "detect"
        else env["FRWATCH_TOPIC_DLQ"]
    )
    asyncio.run(_set_max_message_bytes(kafka_bootstrap, topic, REFUSING))  # `topics create` made it

    worker = Worker(env, tmp_path / "w1").start()
    try:
        code = _exit_code(worker, 120)
    finally:
        worker.kill()
    log = worker.log_tail(200)
    assert code == 1, log
    assert f"refused a write to {topic} for good" in log
    committed = committed_offsets(
        kafka_bootstrap, env["FRWATCH_APP_ID"], env["FRWATCH_TOPIC_REQUESTS"]
    )
    assert committed < total, "offsets committed past a write Kafka refused"
    lost_so_far = want_ids - set(alert_ids_on_topic(kafka_bootstrap, env["FRWATCH_TOPIC_ALERTS"]))
    assert lost_so_far, "the refusal stopped nothing"

    asyncio.run(_set_max_message_bytes(kafka_bootstrap, topic, KAFKA_DEFAULT_MAX_MESSAGE_BYTES))
    worker = Worker(env, tmp_path / "w2").start()
    try:
        wait_for_alerts(
            kafka_bootstrap,
            env["FRWATCH_TOPIC_ALERTS"],
            want_ids,
            180,
            "every replay alert after the fix",
            worker,
        )
        malformed = summary["malformed"]
        wait_for(
            lambda: len(_letter_positions(kafka_bootstrap, env)) >= malformed,
            60,
            "every dead letter after the fix",
            worker,
        )
    finally:
        worker.stop()
    live = set(alert_ids_on_topic(kafka_bootstrap, env["FRWATCH_TOPIC_ALERTS"]))
    assert live == want_ids
    print(
        f"{refusing} refusing: exit {code}, {committed} of {total} input records committed; "
        f"after the fix {len(live)} alerts (replay {len(want_ids)}), "
        f"{len(_letter_positions(kafka_bootstrap, env))} letters (replay {malformed})"
    )


def _control_bytes(n: int) -> bytes:
    pool = bytes(b for b in range(1, 32) if b not in (10, 13))
    return (pool * (n // len(pool) + 1))[:n]


def _poison(events: Path) -> tuple[list[bytes], dict[str, str]]:
    """The archive's lines with poison among them; what each poison should become."""
    lines = events.read_bytes().splitlines()
    valid = [orjson.loads(x) for x in lines if x.startswith(b'{"event_id"')]
    ident = next(
        e for e in valid if e["operation"] == "face.identify" and e["account_id"] == "acct-metro-pd"
    )
    later = parse_event_time(ident["ts"]) + 3 * 3_600_000  # an hour of its own: new windows
    big_batch = {
        "records": [
            {**ident, "event_id": f"poison-batch-{i:05d}", "ts": later, "subject_ids": [f"s-{i}"]}
            for i in range(2400)
        ]
    }
    neighbours = [
        orjson.dumps({**ident, "event_id": f"poison-neighbour-{i:03d}", "subject_ids": [f"n-{i}"]})
        for i in range(50)
    ]

    def nested(event_id: str, levels: int) -> bytes:  # an extra field `levels` deep
        head = orjson.dumps({**ident, "event_id": event_id, "subject_ids": [event_id]})[:-1]
        return head + b',"extra":' + b'{"d":' * levels + b'"end"' + b"}" * levels + b"}"

    # SPEC 2.1: 300 levels are read (orjson reads 1,024) and ignored, but not written again
    # (orjson writes 254); 2,000 levels cannot be read: that record alone is malformed
    deep_ok, too_deep = nested("poison-deep-300", 300), nested("poison-deep-2000", 2000)
    poison = {
        "control": _control_bytes(200_000),
        "not_json": b"x" * 1_000_000,
        "model": orjson.dumps({**ident, "event_id": "poison-model", "model": "m" * 1_000_000}),
        "big_batch": orjson.dumps(big_batch),
        "deep": b'{"records":['
        + b",".join([*neighbours[:25], deep_ok, too_deep, *neighbours[25:]])
        + b"]}",
    }
    assert len(poison["big_batch"]) < 1_040_000, len(poison["big_batch"])
    step = len(lines) // (len(poison) + 1)
    out = list(lines)
    for i, value in enumerate(poison.values()):
        out.insert((i + 1) * step + i, value)
    return out, {k: hashlib.sha256(v).hexdigest() for k, v in poison.items()}


def _key(line: bytes) -> bytes | None:
    """The account id, as `frwatch publish` keys a line (None for anything else)."""
    try:
        obj = orjson.loads(line) if line.startswith(b"{") else None
    except orjson.JSONDecodeError:
        return None
    account = obj.get("account_id") if isinstance(obj, dict) else None
    return account.encode() if isinstance(account, str) else None


def _poison_letters(
    bootstrap: str, env: dict[str, str], sha: dict[str, str]
) -> list[dict[str, Any]] | None:
    """The dead letters of the poison, once all four kinds are there."""
    letters = [
        d
        for _, v in read_topic(bootstrap, env["FRWATCH_TOPIC_DLQ"])
        if v
        and (
            (d := orjson.loads(v))["raw_sha256"] in (sha["control"], sha["not_json"])
            or d["raw"].startswith(('{"event_id":"poison-model"', '{"event_id":"poison-deep-'))
        )
    ]
    return letters if len(letters) >= 4 else None


async def _publish_raw(
    bootstrap: str, topic: str, lines: list[bytes], every_s: float = 0.0
) -> None:
    """Every line, acknowledged; `every_s` apart (the producer waits out broker outages)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        max_request_size=4 << 20,
        linger_ms=5,
        request_timeout_ms=120_000,
    )
    await producer.start()
    try:
        futures = []
        for line in lines:
            futures.append(await producer.send(topic, line, key=_key(line)))
            if every_s:
                await asyncio.sleep(every_s)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def test_poison_messages_are_dead_lettered_bounded_and_the_worker_never_stops(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """Large, deep and control-byte input: bounded letters with reasons, the exact alert set."""
    env, accounts, events = prepared_topics(kafka_bootstrap, unique_name, tmp_path)
    lines, sha = _poison(events)
    archive = write_jsonl(tmp_path / "poisoned.jsonl", lines)
    want, _ = replay_alerts(archive, accounts, env)
    want_ids = {a["alert_id"] for a in want}
    batch_alerts = [
        a
        for a in want
        if any(x["event_id"].startswith("poison-batch-") for x in a["evidence"]["samples"])
    ]
    assert batch_alerts, "the 1 MB batch fires alerts of its own"
    asyncio.run(_publish_raw(kafka_bootstrap, env["FRWATCH_TOPIC_REQUESTS"], lines))
    worker = Worker(env, tmp_path / "w").start()
    try:
        wait_for_alerts(
            kafka_bootstrap,
            env["FRWATCH_TOPIC_ALERTS"],
            want_ids,
            240,
            "every replay alert",
            worker,
        )
        letters = wait_for(
            lambda: _poison_letters(kafka_bootstrap, env, sha), 60, "the poison's letters", worker
        )
        assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail(40)
        assert worker.metric("frwatch_events_total", result="error") == 0
    finally:
        worker.stop()
    live = set(alert_ids_on_topic(kafka_bootstrap, env["FRWATCH_TOPIC_ALERTS"]))
    assert live == want_ids
    on_dlq = [v for _, v in read_topic(kafka_bootstrap, env["FRWATCH_TOPIC_DLQ"]) if v]
    sizes = [len(v) for v in on_dlq]
    assert max(sizes) <= LETTER_LIMIT_BYTES  # always fits the DLQ topic (1 MiB)
    assert max(len(orjson.loads(v)["raw"].encode()) for v in on_dlq) <= RAW_LIMIT_BYTES
    by_sha = {d["raw_sha256"]: d for d in letters}
    control, not_json = by_sha[sha["control"]], by_sha[sha["not_json"]]
    assert control["reason"] == not_json["reason"] == "not_json"
    assert not_json["raw_truncated"] is True and not_json["raw_bytes"] == 1_000_000
    model = next(d for d in letters if d["raw"].startswith('{"event_id":"poison-model"'))
    assert (model["reason"], model["field"], model["raw_truncated"]) == (
        "out_of_range",
        "model",
        True,
    )
    deep = [d for d in letters if d["raw"].startswith('{"event_id":"poison-deep-')]
    assert [d["raw"][:30] for d in deep] == ['{"event_id":"poison-deep-2000"'], "one record alone"
    assert deep[0]["reason"] == "not_json"
    print(
        f"poison: {len(live)} alerts (replay {len(want_ids)}; {len(batch_alerts)} from the 1 MB "
        f"batch), {len(sizes)} letters, largest {max(sizes)} bytes"
    )


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    run_dir = tmp_path / "broker"
    try:
        yield run_dir, start_broker(run_dir)
    finally:
        stop_broker(run_dir)


RESTARTS = 3
DOWN_S = 30.0
RESUME_WITHIN_S = 60.0


def test_broker_restarts_under_load_the_worker_resumes_alone_with_every_alert(
    private_broker: tuple[Path, str], unique_name: str, tmp_path: Path
) -> None:
    """Three broker restarts (data kept) while the worker and a publisher are busy: no kill."""
    run_dir, bootstrap = private_broker
    env, accounts, events = prepared_topics(bootstrap, unique_name, tmp_path, hours=6)
    lines = events.read_bytes().splitlines()
    want, _ = replay_alerts(events, accounts, env)
    want_ids = {a["alert_id"] for a in want}
    half = len(lines) // 2
    topic = env["FRWATCH_TOPIC_REQUESTS"]
    asyncio.run(_publish_raw(bootstrap, topic, lines[:half]))  # a backlog first
    worker = Worker(env, tmp_path / "w").start()
    # the rest through `frwatch publish -` at ~25 lines/s, through every outage
    publish_log = tmp_path / "publish.log"
    publish = subprocess.Popen(
        [sys.executable, "-m", "streams.cli.main", "publish", "--give-up-after", "90", "-"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=publish_log.open("wb"),
        cwd=REPO,
    )

    def steady_feed() -> None:
        assert publish.stdin is not None
        for line in lines[half:]:
            publish.stdin.write(line + b"\n")
            publish.stdin.flush()
            time.sleep(0.04)
        publish.stdin.close()

    publisher = threading.Thread(target=steady_feed, daemon=True)
    resumed: list[float] = []
    try:
        wait_for(lambda: worker.records_counted() > 0, 120, "the worker started", worker)
        publisher.start()
        for _ in range(RESTARTS):
            argv = stop_broker_keeping_data(run_dir)
            time.sleep(DOWN_S)
            start_broker_again(run_dir, argv)
            back = time.monotonic()
            counted = worker.records_counted()  # what it could do without the broker is done
            wait_for(
                lambda counted=counted: worker.records_counted() > counted,
                RESUME_WITHIN_S,
                "records counted again after the broker's return",
                worker,
            )
            resumed.append(time.monotonic() - back)
        publisher.join(timeout=600)
        publish.wait(timeout=300)
        publish_err = publish_log.read_text(errors="replace")
        assert publish.returncode == 0, publish_err[-2000:]
        publish_summary = orjson.loads(publish_err.strip().splitlines()[-1])
        wait_for(
            lambda: set(alert_ids_on_topic(bootstrap, env["FRWATCH_TOPIC_ALERTS"])) >= want_ids,
            RESUME_WITHIN_S,
            "every replay alert",
            worker,
        )
        all_alerts_s = time.monotonic() - back
        assert worker.proc is not None and worker.proc.poll() is None
    finally:
        worker.stop()
        if publish.poll() is None:
            publish.kill()
    live = set(alert_ids_on_topic(bootstrap, env["FRWATCH_TOPIC_ALERTS"]))
    assert live == want_ids
    print(
        f"{RESTARTS} broker restarts of {DOWN_S:.0f}s: counting again "
        f"{', '.join(f'{s:.1f}s' for s in resumed)} after each return; "
        f"{len(live)} alerts (replay {len(want_ids)}), all there {all_alerts_s:.1f}s after the "
        f"last return; publish: {publish_summary}"
    )
