"""`frwatch archive` on the real broker: kill -9 twice, and every message is in exactly one file;
replaying the archive equals the live worker; a replay-mode worker equals offline replay."""

from __future__ import annotations

import asyncio
import gzip
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from scenarios import write_jsonl
from worker_harness import (
    REPO,
    Worker,
    alert_ids_on_topic,
    committed_offsets,
    frwatch,
    frwatch_env,
    prepared_topics,
    read_topic,
    wait_for,
)

from streams.archive_layout import (
    ESCAPE_PREFIX,
    archived_files,
    escape_value,
    file_name,
    hour_dir_name,
    hour_of,
    temp_name,
    unescape_line,
)
from streams.kafkaio import assign_from_beginning
from streams.synthetic import HOUR_MS, demo_traffic

pytestmark = pytest.mark.integration

# values that a JSON line cannot hold as they are; the worker still counts each one
UNSAFE_VALUES: list[bytes | None] = [
    # valid JSON over several lines: processed (and matched) like any other request
    b'{"event_id": "unsafe-nl",\n "ts": 1795000000000,\n "account_id": "acct-metro-pd",\n'
    b' "operation": "face.identify", "image_count": 1}',
    b'{"event_id": "unsafe-crlf", "ts": 1795000001000,\r\n "account_id": "acct-metro-pd", '
    b'"operation": "face.identify", "image_count": 1}\r',
    b"\xff\xfe not utf-8 \x80",
    b"",
    None,  # a tombstone
    b"   \t ",
    ESCAPE_PREFIX + b'"e30="}',  # looks like an escape line: archived escaped itself
]


class Archiver(Worker):
    """A `frwatch archive` subprocess with its own /metrics port (the harness's Worker
    supplies the metrics probe, kill and stop)."""

    def __init__(self, env: dict[str, str], workdir: Path, archive_dir: Path) -> None:
        super().__init__(env, workdir)
        self.archive_dir = archive_dir
        self.log_path = workdir / f"archiver-{self.port}.log"

    def start_with(self, *flags: str) -> Archiver:
        """Launch `frwatch archive --dir DIR FLAGS` and wait until /metrics answers."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streams.cli.main",
                "archive",
                "--dir",
                str(self.archive_dir),
                *flags,
            ],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self.metrics_text() is not None, 60, "archiver /metrics", self)
        return self

    def files(self) -> float:
        return self.metric("frwatch_archive_files_total")


def produce(bootstrap: str, topic: str, values: list[tuple[bytes | None, bytes | None]]) -> None:
    """Send (key, value) messages as they are, acknowledged (None values too)."""

    async def main() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for key, value in values:
                await producer.send_and_wait(topic, value, key=key)
        finally:
            await producer.stop()

    asyncio.run(main())


def topic_end(bootstrap: str, topic: str) -> int:
    """Sum of the topic's end offsets (its messages: nothing is ever deleted here)."""

    async def main() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            return sum((await assign_from_beginning(consumer, topic)).values())
        finally:
            await consumer.stop()

    return asyncio.run(main())


def settled(bootstrap: str, env: dict[str, str], worker: Worker) -> None:
    """Wait until the worker's group committed the whole requests topic, then its detect
    topic to the end it had then: the worker's counts and alerts are final (SPEC 2.3:
    nothing is committed before what it caused was acknowledged)."""
    group = env["FRWATCH_APP_ID"]
    for topic in (env["FRWATCH_TOPIC_REQUESTS"], f"{group}-detect"):
        end = topic_end(bootstrap, topic)
        assert end > 0, topic
        wait_for(
            lambda t=topic, e=end: committed_offsets(bootstrap, group, t) >= e,
            120,
            f"the worker to commit {topic} to {end}",
            worker,
        )


def topic_by_offset(bootstrap: str, topic: str) -> dict[int, list[tuple[int, bytes | None, int]]]:
    """partition -> (offset, value, Kafka timestamp) of every message, in offset order."""

    async def main() -> dict[int, list[tuple[int, bytes | None, int]]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            ends = await assign_from_beginning(consumer, topic)
            out: dict[int, list[tuple[int, bytes | None, int]]] = {tp.partition: [] for tp in ends}
            while any([await consumer.position(tp) < end for tp, end in ends.items()]):
                for tp, recs in (await consumer.getmany(timeout_ms=1000)).items():
                    out[tp.partition].extend((r.offset, r.value, r.timestamp) for r in recs)
            return out
        finally:
            await consumer.stop()

    return asyncio.run(main())


def archive_by_offset(root: Path) -> dict[int, list[tuple[int, bytes | None]]]:
    """partition -> (offset, value) of every archived line, from the files' names: a file's
    lines are its partition's messages from its first offset on (no gaps: no compaction,
    no transactions on this topic)."""
    out: dict[int, list[tuple[int, bytes | None]]] = {}
    for f in sorted(archived_files(root), key=lambda f: (f.partition, f.first_offset)):
        with gzip.open(f.path, "rb") as fh:
            lines = fh.read().split(b"\n")
        assert lines[-1] == b"", f"{f.path} ends with a whole line"
        rows = out.setdefault(f.partition, [])
        assert not rows or rows[-1][0] + 1 == f.first_offset, (
            f"{f.path}: starts at {f.first_offset}, the file before ends at {rows[-1][0]}"
        )
        rows.extend((f.first_offset + i, unescape_line(line)) for i, line in enumerate(lines[:-1]))
    return out


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def plant_uncommitted_file(
    bootstrap: str, env: dict[str, str], root: Path, messages: dict[int, list[Any]]
) -> tuple[int, str]:
    """What a crash between a file's rename and its commit leaves: a complete file at the
    committed offset of a partition, and a temp file after it. The next run must remove both
    before it writes that partition again, whatever offsets it cuts its files at."""
    group = f"{env['FRWATCH_APP_ID']}-archive"
    topic = env["FRWATCH_TOPIC_REQUESTS"]

    async def committed() -> dict[int, int]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        return {tp.partition: m.offset for tp, m in offsets.items() if tp.topic == topic}

    done = asyncio.run(committed())
    for p, rows in sorted(messages.items()):
        start = max(done.get(p, 0), 0)
        rest = [r for r in rows if r[0] >= start]
        if len(rest) < 10:
            continue
        hour = hour_of(rest[0][2])
        same_hour = [r for r in rest if hour_of(r[2]) == hour][:9]
        d = root / hour_dir_name(hour)
        d.mkdir(exist_ok=True)
        # two complete files (the second is the trap: a restart that cuts its first file
        # longer than 3 messages overlaps it), then the temp file of a third
        for first, rows_of_file in ((start, same_hour[:3]), (start + 3, same_hour[3:])):
            with gzip.open(d / file_name(p, first), "wb") as fh:
                fh.write(b"".join(escape_value(v) + b"\n" for _, v, _ in rows_of_file))
        (d / temp_name(p, start + len(same_hour), 999_999)).write_bytes(b"\x1f\x8bpartial")
        return (
            p,
            f"partition {p}: files at offsets {start} and {start + 3} ({len(same_hour)} messages)",
        )
    raise AssertionError("no partition with messages left to archive")


def kill_mid_stream(
    archiver: Archiver, bootstrap: str, env: dict[str, str], more: Path, name: str
) -> str:
    """Stop the archiver (SIGSTOP), publish `more` so that it surely has more to do, then
    kill -9 it; says where it was."""
    topic = env["FRWATCH_TOPIC_REQUESTS"]
    files_done = archiver.files()
    assert archiver.proc is not None
    archiver.proc.send_signal(signal.SIGSTOP)
    frwatch(["publish", str(more)], env)
    archiver.kill(signal.SIGKILL)
    published = topic_end(bootstrap, topic)
    committed = committed_offsets(bootstrap, f"{name}-archive", topic)
    on_disk = len(archived_files(archiver.archive_dir))
    assert files_done >= 1 and 0 < committed < published, (committed, published)
    return (
        f"killed with {committed} of {published} messages committed, {on_disk} files on disk, "
        f"{len(temp_files(archiver.archive_dir))} temp files"
    )


def test_archive_survives_kill_9_twice_and_replays_as_the_worker_saw_it(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env, accounts, events = prepared_topics(kafka_bootstrap, unique_name, tmp_path, hours=6)
    topic = env["FRWATCH_TOPIC_REQUESTS"]
    root = tmp_path / "archive"
    lines = events.read_bytes().splitlines()
    third = len(lines) // 3
    parts = [
        write_jsonl(
            tmp_path / f"part-{i}.jsonl", lines[i * third : (i + 1) * third if i < 2 else None]
        )
        for i in range(3)
    ]
    worker = Worker(env, tmp_path / "w").start()
    archiver = Archiver(env, tmp_path / "a", root).start_with(
        "--max-file-bytes", "40000", "--max-file-seconds", "1"
    )
    kills: list[str] = []
    try:
        # part 1, then the unsafe values; kill -9 once the archiver has written a file and
        # has more to do (stopped first, so that the rest of the stream is surely ahead of it)
        frwatch(["publish", str(parts[0])], env)
        produce(kafka_bootstrap, topic, [(b"acct-metro-pd", v) for v in UNSAFE_VALUES])
        wait_for(lambda: archiver.files() >= 1, 60, "a first archive file", archiver)
        kills.append(kill_mid_stream(archiver, kafka_bootstrap, env, parts[1], unique_name))
        # the trap: a complete file whose offsets were never committed
        planted, where = plant_uncommitted_file(
            kafka_bootstrap, env, root, topic_by_offset(kafka_bootstrap, topic)
        )
        kills.append(f"planted complete, uncommitted files: {where}")

        archiver = Archiver(env, tmp_path / "a", root).start_with(
            "--max-file-bytes", "25000", "--max-file-seconds", "1"
        )
        wait_for(lambda: archiver.files() >= 1, 60, "a file after the first restart", archiver)
        wait_for(
            lambda: f"partition {planted}: removed" in archiver.log_path.read_text(),
            60,
            "the planted files removed",
            archiver,
        )
        assert archiver.metric("frwatch_archive_files_removed_total", reason="restart") >= 1
        kills.append(kill_mid_stream(archiver, kafka_bootstrap, env, parts[2], unique_name))
        published = topic_end(kafka_bootstrap, topic)

        archiver = Archiver(env, tmp_path / "a", root).start_with(
            "--max-file-bytes", "60000", "--max-file-seconds", "1"
        )
        started = time.monotonic()
        wait_for(
            lambda: (
                committed_offsets(kafka_bootstrap, f"{unique_name}-archive", topic) >= published
            ),
            120,
            "the archive group committed to the end of the topic",
            archiver,
        )
        took = time.monotonic() - started
        archiver.stop()
        assert archiver.proc is not None and archiver.proc.returncode == 0, archiver.log_tail()

        settled(kafka_bootstrap, env, worker)
        live = set(alert_ids_on_topic(kafka_bootstrap, env["FRWATCH_TOPIC_ALERTS"]))
        results = {
            r: worker.metric("frwatch_events_total", result=r)
            for r in ("processed", "malformed", "rejected", "duplicate", "error", "skipped")
        }
    finally:
        worker.stop()
        archiver.kill(signal.SIGKILL)

    # every message of the topic is in exactly one file, as it was sent; no partial file
    assert temp_files(root) == []
    on_topic = topic_by_offset(kafka_bootstrap, topic)
    archived = archive_by_offset(root)
    assert set(archived) <= set(on_topic)
    for p, rows in on_topic.items():
        assert archived.get(p, []) == [(o, v) for o, v, _ in rows], f"partition {p}"
    assert sum(len(r) for r in archived.values()) == published

    # replaying the directory gives the worker's alert set and per-result counts
    proc = frwatch(["replay", "--accounts", str(accounts), str(root)], env)
    alerts = [orjson.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    summary = orjson.loads(proc.stderr.decode().strip().splitlines()[-1])
    assert {a["alert_id"] for a in alerts} == live
    assert summary["events"] == sum(results.values())
    assert summary["malformed"] == results["malformed"]
    assert summary["duplicates"] == results["duplicate"]
    assert summary["skipped"] == results["skipped"] == 0
    assert results["rejected"] == results["error"] == 0
    assert summary["events"] - summary["malformed"] - summary["duplicates"] == results["processed"]
    files = len(archived_files(root))
    print(
        f"\narchive crash test: {published} messages in {files} files; "
        + "; ".join(kills)
        + f"; the last run caught up in {took:.1f} s; {len(live)} alerts, results {results}"
    )


def test_a_replay_mode_worker_equals_offline_replay_of_the_archive(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """FRWATCH_MODE=replay: an archive published to a replay topic (`publish --topic`) and
    run by workers with their own app id gives offline replay's alerts, records whose
    timestamps lie in the future of the wall clock included."""
    env, accounts, events = prepared_topics(kafka_bootstrap, unique_name, tmp_path, hours=2)
    future_start = (int(time.time() * 1000) // HOUR_MS + 48) * HOUR_MS + 60_000
    future = [
        {**e, "event_id": f"fut-{e['event_id']}"} if isinstance(e, dict) else e
        for e in demo_traffic(11, future_start, 120)
    ]
    write_jsonl(tmp_path / "future.jsonl", future)
    frwatch(["publish", str(events), str(tmp_path / "future.jsonl")], env)
    produce(kafka_bootstrap, env["FRWATCH_TOPIC_REQUESTS"], [(b"acct-x", v) for v in UNSAFE_VALUES])
    root = tmp_path / "archive"
    archiver = Archiver(env, tmp_path / "a", root).start_with("--max-file-seconds", "1")
    try:
        published = topic_end(kafka_bootstrap, env["FRWATCH_TOPIC_REQUESTS"])
        wait_for(
            lambda: (
                committed_offsets(
                    kafka_bootstrap, f"{unique_name}-archive", env["FRWATCH_TOPIC_REQUESTS"]
                )
                >= published
            ),
            90,
            "the whole topic archived",
            archiver,
        )
    finally:
        archiver.stop()
    proc = frwatch(["replay", "--accounts", str(accounts), str(root)], env)
    expected = {orjson.loads(line)["alert_id"] for line in proc.stdout.splitlines() if line}
    summary = orjson.loads(proc.stderr.decode().strip().splitlines()[-1])
    in_future = [
        a
        for a in map(orjson.loads, proc.stdout.splitlines())
        if a["window"]["start"] > time.strftime("%Y-%m-%dT%H", time.gmtime(time.time() + 3600))
    ]
    assert in_future, "some alerts come from records ahead of the wall clock"

    name = f"{unique_name}-r"
    replay_env = frwatch_env(kafka_bootstrap, name, FRWATCH_MODE="replay")
    frwatch(["topics", "create"], replay_env)
    frwatch(["accounts", "load", str(accounts)], replay_env)
    frwatch(["publish", "--topic", replay_env["FRWATCH_TOPIC_REQUESTS"], str(root)], env)
    worker = Worker(replay_env, tmp_path / "w").start()
    try:
        wait_for(
            lambda: worker.records_counted() >= summary["events"],
            120,
            "every record counted",
            worker,
        )
        settled(kafka_bootstrap, replay_env, worker)
        assert worker.records_counted() == summary["events"]
        assert worker.metric("frwatch_events_total", result="rejected") == 0
        assert worker.metric("frwatch_events_total", result="malformed") == summary["malformed"]
        assert worker.metric("frwatch_events_total", result="duplicate") == summary["duplicates"]
    finally:
        worker.stop()
    msgs = read_topic(kafka_bootstrap, replay_env["FRWATCH_TOPIC_ALERTS"])
    assert {orjson.loads(v or b"{}")["alert_id"] for _, v in msgs} == expected
    assert {orjson.loads(v or b"{}")["mode"] for _, v in msgs} == {"replay"}
    print(
        f"\nreplay mode: {summary['events']} records, {len(expected)} alerts "
        f"({len(in_future)} in windows ahead of the wall clock)"
    )


def test_sigterm_completes_the_open_files_and_commits_them(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """With files that would stay open for an hour, a SIGTERM still leaves every message read
    in a complete, committed file, and exit 0."""
    env, _, events = prepared_topics(kafka_bootstrap, unique_name, tmp_path, hours=1)
    topic = env["FRWATCH_TOPIC_REQUESTS"]
    frwatch(["publish", str(events)], env)
    published = topic_end(kafka_bootstrap, topic)
    root = tmp_path / "archive"
    archiver = Archiver(env, tmp_path / "a", root).start_with("--max-file-seconds", "3600")
    try:
        # every partition's messages read into an open file: the lag gauge says how many
        # are not committed yet, the age gauge that a file is open
        wait_for(
            lambda: (
                archiver.metric("frwatch_archive_lag_seconds") > 0
                and archiver.metric("frwatch_archive_lag_messages") == published
            ),
            60,
            "the topic read into open files",
            archiver,
        )
        assert archiver.files() == 0 and archiver.metric("frwatch_archive_lag_seconds") > 0
        assert len(temp_files(root)) == 4  # one open file per partition
        archiver.stop()
        assert archiver.proc is not None and archiver.proc.returncode == 0, archiver.log_tail()
    finally:
        archiver.kill(signal.SIGKILL)
    assert committed_offsets(kafka_bootstrap, f"{unique_name}-archive", topic) == published
    assert temp_files(root) == []
    archived = archive_by_offset(root)
    on_topic = topic_by_offset(kafka_bootstrap, topic)
    assert archived == {p: [(o, v) for o, v, _ in rows] for p, rows in on_topic.items()}
    summary = orjson.loads(archiver.log_path.read_text().strip().splitlines()[-1])
    assert summary["records"] == published and summary["files"] == 4
