"""`frwatch publish` accounts for every line (SPEC 6; issue 14, item 6): a broker that stops
mid-way, a line too large for the broker, `--from-line`, and topics that do not exist."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from kafka_broker import start_broker, start_broker_again, stop_broker, stop_broker_keeping_data
from scenarios import write_jsonl
from worker_harness import REPO, free_port, frwatch, frwatch_env, read_topic

from streams.kafkaio import assign_from_beginning
from streams.synthetic import DEFAULT_START_MS

pytestmark = pytest.mark.integration

HOW_FAR = re.compile(
    r"^frwatch publish: error: (?P<why>.+?); (?P<sent>\d+) lines sent, "
    r"first line not sent: (?P<first>\d+)(?: \((?P<where>[^)]+)\))?; "
    r"resume with --from-line (?P=first)(?P<rest>.*)$"
)


def run(
    args: list[str], env: dict[str, str], stdin: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli.main", *args],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=timeout,
        cwd=REPO,
    )


def event(i: int, pad: int = 0) -> dict[str, Any]:
    return {
        "event_id": f"pub-{i:06d}",
        "ts": DEFAULT_START_MS + i,
        "account_id": f"acct-{i % 37}",
        "operation": "face.verify",
        **({"pad": "x" * pad} if pad else {}),
    }


def summary_of(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(proc.stderr.decode().strip().splitlines()[-1])
    return doc


def topic_names(bootstrap: str) -> set[str]:
    async def names() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    return asyncio.run(names())


def messages_on(bootstrap: str, topic: str) -> int:
    async def count() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        await consumer.start()
        try:
            ends = await assign_from_beginning(consumer, topic, 10)
            starts = await consumer.beginning_offsets(list(ends))
            return sum(ends[tp] - starts[tp] for tp in ends)
        finally:
            await consumer.stop()

    return asyncio.run(count())


def assert_each_once_in_order(msgs: list[tuple[bytes | None, bytes | None]], lines: list[bytes]):
    values = [v for _, v in msgs]
    assert len(values) == len(set(values)), "a line arrived twice"
    assert sorted(values) == sorted(lines), (len(values), len(lines))  # type: ignore[type-var]
    order = {line: i for i, line in enumerate(lines)}
    by_key: dict[bytes | None, list[int]] = defaultdict(list)
    for key, value in msgs:
        assert value is not None
        by_key[key].append(order[value])
    for key, positions in by_key.items():
        assert positions == sorted(positions), f"key {key!r} out of order"


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A broker of this module's own, which the outage test stops and starts again."""
    run_dir = tmp_path_factory.mktemp("publish-broker")
    try:
        yield run_dir, start_broker(run_dir)
    finally:
        stop_broker(run_dir)


def test_a_broker_stopped_mid_way_then_from_line_completes_the_topic(
    own_broker: tuple[Path, str], unique_name: str, tmp_path: Path
) -> None:
    """20,000 lines; the broker stops after ~8,000. publish gives up within its bound, says
    how many lines it sent and the first it did not; after the broker is back, `--from-line`
    sends the rest: every line once, in order per key."""
    run_dir, bootstrap = own_broker
    env = frwatch_env(bootstrap, unique_name)
    frwatch(["topics", "create"], env)
    topic = f"{unique_name}.requests"
    lines = [orjson.dumps(event(i, pad=200)) for i in range(20_000)]
    archive = tmp_path / "events.jsonl"
    archive.write_bytes(b"".join(line + b"\n" for line in lines))

    # the same lines through a pipe, so that the broker stops while publish is mid-way
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli.main", "publish", "--give-up-after", "8", "-"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdin is not None
    proc.stdin.write(b"".join(line + b"\n" for line in lines[:8_000]))
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while messages_on(bootstrap, topic) < 8_000:
        assert time.monotonic() < deadline, "publish did not send the first 8,000 lines"
        time.sleep(0.2)
    # the rest at once, and the broker stops at once: lines in flight, some acknowledged
    rest = b"".join(line + b"\n" for line in lines[8_000:])
    result: list[tuple[bytes, bytes]] = []
    writer = threading.Thread(target=lambda: result.append(proc.communicate(rest, 90)))
    writer.start()
    time.sleep(0.05)
    argv = stop_broker_keeping_data(run_dir)
    stopped = time.monotonic()
    try:
        writer.join(90)
        ((_, err),) = result
        gave_up_after = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
        start_broker_again(run_dir, argv)
    text = err.decode().strip()
    print(f"publish gave up {gave_up_after:.1f}s after the broker stopped: {text}")
    assert proc.returncode == 2, text
    assert len(text.splitlines()) == 1, text
    m = HOW_FAR.match(text)
    assert m, text
    sent, first = int(m["sent"]), int(m["first"])
    # Kafka orders per partition: later lines on other partitions may be in already
    too = re.search(r"\((\d+) lines after it were sent too", m["rest"])
    after = int(too[1]) if too else 0
    assert 8_000 <= sent < 20_000 and first == sent - after + 1, text
    assert m["where"] == f"-:{first}"
    assert gave_up_after < 8 + 30

    resumed = run(["publish", "--from-line", str(first), str(archive)], env)
    assert resumed.returncode == 0, resumed.stderr.decode()
    summary = summary_of(resumed)
    print(f"resumed from line {first}: {summary}")
    assert summary["lines"] == 20_001 - first and summary["refused"] == 0
    # those, and any that Kafka wrote without its acknowledgement reaching publish
    assert summary["already_on_topic"] >= after
    assert summary["messages"] + summary["already_on_topic"] == 20_001 - first
    assert summary["from_line"] == first and summary["last_line"] == 20_000
    assert_each_once_in_order(read_topic(bootstrap, topic, max_s=60), lines)


def test_a_line_too_large_for_the_broker_is_named_and_the_others_all_go(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env = frwatch_env(kafka_bootstrap, unique_name)
    frwatch(["topics", "create"], env)
    big = orjson.dumps(event(7, pad=5 << 20))  # 5 MB, over the broker's 1 MiB message.max.bytes
    rows: list[Any] = [*(event(i) for i in range(7)), big, *(event(i) for i in range(8, 15))]
    path = write_jsonl(tmp_path / "events.jsonl", rows)
    proc = run(["publish", str(path)], env)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    (named,) = [line for line in err.splitlines() if "refused by Kafka" in line]
    assert named.startswith(f"frwatch publish: line 8 ({path}:8): refused by Kafka")
    summary = summary_of(proc)
    assert summary["lines"] == 14 and summary["refused"] == 1
    assert summary["refused_lines"] == [8]
    good = [orjson.dumps(r) for r in rows if not isinstance(r, bytes)]
    assert_each_once_in_order(read_topic(kafka_bootstrap, f"{unique_name}.requests"), good)


def test_lines_refused_as_a_batch_go_alone_and_only_the_one_too_large_is_refused(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """A topic that takes messages of 200 KB: lines of 120 KB fit alone, not two in a batch,
    and the producer batches them (one key, one partition). Every line that fits arrives,
    once, in order; the one of 400 KB is named."""
    topic = f"{unique_name}.small"

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "200000"})]
            )
        finally:
            await admin.close()

    asyncio.run(create())
    rows = [{**event(i, pad=120_000), "account_id": "acct-one"} for i in range(8)]
    rows.insert(5, {**event(99, pad=400_000), "account_id": "acct-one"})
    lines = [orjson.dumps(r) for r in rows]
    path = write_jsonl(tmp_path / "events.jsonl", rows)
    env = frwatch_env(kafka_bootstrap, unique_name)
    proc = run(["publish", "--topic", topic, str(path)], env)
    assert proc.returncode == 2, proc.stderr.decode()
    summary = summary_of(proc)
    assert summary["refused_lines"] == [6] and summary["lines"] == 8, summary
    good = [line for i, line in enumerate(lines) if i != 5]
    assert_each_once_in_order(read_topic(kafka_bootstrap, topic), good)


def test_from_line_counts_every_line_of_the_archives_in_order(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env = frwatch_env(kafka_bootstrap, unique_name)
    frwatch(["topics", "create"], env)
    a = tmp_path / "a.jsonl"
    a.write_bytes(b"".join(orjson.dumps(event(i)) + b"\n" for i in range(3)) + b"\n")  # 4 lines
    b = write_jsonl(tmp_path / "b.jsonl", [event(i) for i in range(3, 6)])
    proc = run(["publish", "--from-line", "6", str(a), str(b)], env)
    assert proc.returncode == 0, proc.stderr.decode()
    summary = summary_of(proc)
    assert summary["lines"] == 2 and summary["from_line"] == 6 and summary["last_line"] == 7
    got = sorted(v for _, v in read_topic(kafka_bootstrap, f"{unique_name}.requests"))
    assert got == sorted(orjson.dumps(event(i)) for i in (4, 5))


def test_a_missing_topic_is_one_line_naming_it_and_is_not_created(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env = frwatch_env(kafka_bootstrap, unique_name)
    path = write_jsonl(tmp_path / "events.jsonl", [event(1)])
    missing = f"{unique_name}.nowhere"
    commands = [
        (["publish", "--topic", missing, str(path)], missing),
        (["publish", str(path)], f"{unique_name}.requests"),
        (["accounts", "load", str(path)], f"{unique_name}.accounts"),
        (["alerts", "tail", "--idle-exit", "1"], f"{unique_name}.alerts"),
    ]
    for args, topic in commands:
        started = time.monotonic()
        proc = run(args, env, timeout=60)
        err = proc.stderr.decode().strip()
        assert proc.returncode == 2, (args, err)
        assert len(err.splitlines()) == 1, err
        assert f"topic {topic} does not exist" in err, err
        assert time.monotonic() - started < 30
    worker = run(["worker"], {**env, "FRWATCH_WEB_PORT": str(free_port())}, timeout=60)
    err = worker.stderr.decode().strip()
    assert worker.returncode == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"frwatch worker: error: topics {unique_name}.requests, ")
    assert "do not exist" in err and "frwatch topics create" in err
    assert not {t for t in topic_names(kafka_bootstrap) if t.startswith(unique_name)}
