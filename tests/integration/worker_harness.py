"""Run real `frwatch` processes against the test broker: worker, publish, replay, topics."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.kafkaio import assign_from_beginning

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def frwatch_env(bootstrap: str, name: str, **extra: str) -> dict[str, str]:
    """Environment for frwatch commands with this test's own topics and app id."""
    env = dict(os.environ)
    env.update(
        {
            "FRWATCH_BROKER": bootstrap,
            "FRWATCH_APP_ID": name,
            "FRWATCH_TOPIC_REQUESTS": f"{name}.requests",
            "FRWATCH_TOPIC_ACCOUNTS": f"{name}.accounts",
            "FRWATCH_TOPIC_ALERTS": f"{name}.alerts",
            "FRWATCH_TOPIC_DLQ": f"{name}.dlq",
            "FRWATCH_TOPIC_EXCEPTIONS": f"{name}.exceptions",
            "FRWATCH_TOPIC_RULES": f"{name}.rules",
            "FRWATCH_PARTITIONS": "4",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def frwatch(
    args: list[str], env: dict[str, str], stdin: bytes | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[bytes]:
    """Run one frwatch command to completion (raises on a non-zero exit)."""
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli.main", *args],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=timeout,
        cwd=REPO,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"frwatch {' '.join(args)} exited {proc.returncode}:\n{proc.stderr.decode()[-3000:]}"
        )
    return proc


class Worker:
    """A `frwatch worker` subprocess with its own web port and working directory."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.port = free_port()
        self.env = {**env, "FRWATCH_WEB_PORT": str(self.port)}
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"worker-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        """Launch and wait until /metrics answers."""
        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli.main", "worker", "--loglevel", "info"],
            env=self.env,
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self.metrics_text() is not None, 90, "worker /metrics", self)
        return self

    def metrics_text(self, *names: str) -> str | None:
        """The /metrics page (only the series `names`, if given), or None when the worker
        does not answer."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log_tail()}")
        query = "&".join(f"name[]={n}" for n in names)
        try:
            url = f"http://127.0.0.1:{self.port}/metrics" + (f"?{query}" if query else "")
            with urllib.request.urlopen(url, timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            return None

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        text = self.metrics_text() or ""
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, label_text = head.partition("{")
            if metric != name:
                continue
            if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total

    def records_counted(self) -> int:
        """Input records counted in frwatch_events_total under any result."""
        return int(self.metric("frwatch_events_total"))

    def log_tail(self, n: int = 60) -> str:
        """The end of the worker's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send a signal and reap the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        """Graceful stop (SIGTERM)."""
        self.kill(signal.SIGTERM)


def wait_for(
    cond: Callable[[], Any], timeout: float, what: str, worker: Worker | list[Worker] | None = None
) -> Any:
    """Poll `cond` until truthy; on timeout fail with every given worker's counts and log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.25)
    workers = worker if isinstance(worker, list) else [worker] if worker is not None else []
    tails = "".join(
        f"\n--- worker on port {w.port} (records counted: {_safe_count(w)}):\n{w.log_tail(40)}"
        for w in workers
    )
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{tails}")


def _safe_count(worker: Worker) -> object:
    try:
        return worker.records_counted()
    except AssertionError as exc:  # the worker died
        return str(exc).splitlines()[0]


def end_offsets_total(bootstrap: str, topic: str) -> int:
    """Sum of the topic's end offsets (messages written to it, for a topic never truncated)."""

    async def main() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            if not parts:
                await consumer.topics()  # metadata
                parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in parts]
            return sum((await consumer.end_offsets(tps)).values())
        finally:
            await consumer.stop()

    return asyncio.run(main())


def wait_settled(bootstrap: str, env: dict[str, str], timeout: float, worker: Worker) -> None:
    """Wait until the group has committed every input message and every forward made of it.

    Offsets are committed only after Kafka acknowledged what they caused (SPEC 2.3): once the
    requests topic is committed to its end, and then the detect topic to the end it had at
    that moment, every alert of that input is on the alert topic, and nothing more will come
    of it. (The detect topic's end moves on: watermark records arrive every second.)
    """
    group = env["FRWATCH_APP_ID"]
    requests = env["FRWATCH_TOPIC_REQUESTS"]
    detect = f"{group}-detect"
    published = end_offsets_total(bootstrap, requests)
    wait_for(
        lambda: committed_offsets(bootstrap, group, requests) >= published,
        timeout,
        f"the group to commit all {published} input messages",
        worker,
    )
    forwarded = end_offsets_total(bootstrap, detect)
    wait_for(
        lambda: committed_offsets(bootstrap, group, detect) >= forwarded,
        timeout,
        f"the group to commit the detect topic to {forwarded}",
        worker,
    )


async def _read_all(
    bootstrap: str, topic: str, idle_s: float, max_s: float
) -> list[tuple[bytes | None, bytes | None]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        try:
            ends = await assign_from_beginning(consumer, topic, max_s)
        except RuntimeError:
            return []
        tps = list(ends)
        out: list[tuple[bytes | None, bytes | None]] = []
        while True:
            positions = {tp: await consumer.position(tp) for tp in tps}
            if all(positions[tp] >= ends[tp] for tp in tps):
                break
            batches = await consumer.getmany(timeout_ms=int(idle_s * 1000))
            for recs in batches.values():
                out.extend((r.key, r.value) for r in recs)
        return out
    finally:
        await consumer.stop()


def read_topic(
    bootstrap: str, topic: str, idle_s: float = 1.0, max_s: float = 30.0
) -> list[tuple[bytes | None, bytes | None]]:
    """Every message of a topic up to its current end offsets."""
    return asyncio.run(_read_all(bootstrap, topic, idle_s, max_s))


def alert_ids_on_topic(bootstrap: str, topic: str) -> list[str]:
    """alert_id of every alert, repeats included: of its `open` revisions (SPEC 5), so that
    an alert's `update` and `closed` revisions are not taken for repeats."""
    return [
        doc["alert_id"]
        for _, v in read_topic(bootstrap, topic)
        if v and (doc := orjson.loads(v))["status"] == "open"
    ]


def replay_alerts(
    archive: Path, accounts: Path, env: dict[str, str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`frwatch replay` of the same files: the alerts (their `open` revisions: replay also
    writes each alert's `update` and `closed` revisions) and the summary line."""
    proc = frwatch(["replay", "--accounts", str(accounts), str(archive)], env)
    alerts = [orjson.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    alerts = [a for a in alerts if a["status"] == "open"]
    summary = orjson.loads(proc.stderr.decode().strip().splitlines()[-1])
    return alerts, summary


def prepared_topics(
    bootstrap: str, name: str, tmp: Path, hours: int = 2
) -> tuple[dict[str, str], Path, Path]:
    """This test's topics created and its accounts loaded; the scenario archive, unpublished."""
    from scenarios import scenario_archive

    env = frwatch_env(bootstrap, name)
    accounts, events = scenario_archive(tmp, hours=hours)
    frwatch(["topics", "create"], env)
    frwatch(["accounts", "load", str(accounts)], env)
    return env, accounts, events


def committed_offsets(
    bootstrap: str, group: str, topic: str, client: dict[str, Any] | None = None
) -> int:
    """Sum of the group's committed offsets on the topic (records it may never see again)."""

    async def main() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(client or {}))
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        return sum(m.offset for tp, m in offsets.items() if tp.topic == topic and m.offset > 0)

    return asyncio.run(main())


def wait_for_alerts(
    bootstrap: str, topic: str, want: set[str], timeout: float, what: str, worker: Worker
) -> None:
    """Wait until every alert id of `want` is on the alert topic."""
    wait_for(lambda: set(alert_ids_on_topic(bootstrap, topic)) >= want, timeout, what, worker)
