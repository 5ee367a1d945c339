"""The live half of `frwatch bench`: raw consume limit, Faust floor, the real worker, latency."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.cli.ops import _send_all, archive_messages, create_topics, delete_topics
from streams.kafkaio import assign_from_beginning, client_kwargs
from streams.settings import Settings, settings_from_env
from streams.synthetic import SAMPLE_ACCOUNTS, TrafficMaker
from topics.requests import batch_envelope

Say = Callable[[str], None]


def _bench_settings(base: Settings, name: str, port: int) -> Settings:
    return settings_from_env(
        {},
        {
            "broker": base.broker,
            "kafka_config": base.kafka_config,
            "app_id": name,
            "web_bind": "127.0.0.1",
            "web_port": port,
            "topic_requests": f"{name}.requests",
            "topic_accounts": f"{name}.accounts",
            "topic_alerts": f"{name}.alerts",
            "topic_dlq": f"{name}.dlq",
            "topic_exceptions": f"{name}.exceptions",
            "topic_rules": f"{name}.rules",
            "partitions": base.partitions,
            "screening_processes": base.screening_processes,
            "store": base.store,
        },
    )


def _env(s: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "FRWATCH_BROKER": s.broker,
        "FRWATCH_KAFKA_CONFIG": s.kafka_config or "",
        "FRWATCH_APP_ID": s.app_id,
        "FRWATCH_WEB_BIND": s.web_bind,
        "FRWATCH_WEB_PORT": str(s.web_port),
        "FRWATCH_TOPIC_REQUESTS": s.topic_requests,
        "FRWATCH_TOPIC_ACCOUNTS": s.topic_accounts,
        "FRWATCH_TOPIC_ALERTS": s.topic_alerts,
        "FRWATCH_TOPIC_DLQ": s.topic_dlq,
        "FRWATCH_TOPIC_EXCEPTIONS": s.topic_exceptions,
        "FRWATCH_TOPIC_RULES": s.topic_rules,
        "FRWATCH_PARTITIONS": str(s.partitions),
        "FRWATCH_SCREENING_PROCESSES": str(s.screening_processes),
        "FRWATCH_STORE": s.store,
    }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _raw_consume(s: Settings, expected: int, batched: bool) -> float:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=s.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 << 20,
        fetch_max_bytes=64 << 20,
        **client_kwargs(s),
    )
    await consumer.start()
    try:
        await assign_from_beginning(consumer, s.topic_requests)
        n, first = 0, 0.0
        loads = orjson.loads
        while n < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if not first and batches:
                first = time.perf_counter()
            for recs in batches.values():
                for r in recs:
                    doc = loads(r.value)
                    n += len(doc["records"]) if batched else 1
        return n / (time.perf_counter() - first)
    finally:
        await consumer.stop()


def _metric(port: int, name: str) -> float:
    try:
        url = f"http://127.0.0.1:{port}/metrics?name[]={name}"  # that family only: cheap
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return -1.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def _rss_mib(pid: int) -> float:
    """RSS of the worker process plus its screening processes (its children)."""
    return _own_rss_mib(pid) + sum(_own_rss_mib(child) for child in _children(pid))


def _own_rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # a child that just ended
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found.extend(int(c) for c in fh.read().split())
    except OSError:
        pass
    return found


async def _latency(s: Settings, rate: float, seconds: float, batch: int, say: Say) -> list[float]:
    """Offer `rate` events/s in messages of `batch` records, a violation every 50 ms among
    them; returns ms from sending each violation to its alert being readable."""
    maker = TrafficMaker(seed=99, prefix=f"lat{uuid.uuid4().hex[:6]}")
    producer = AIOKafkaProducer(
        bootstrap_servers=s.bootstrap_servers,
        linger_ms=2,
        max_batch_size=1 << 20,
        max_request_size=8 << 20,
        **client_kwargs(s),
    )
    consumer = AIOKafkaConsumer(
        s.topic_alerts,
        bootstrap_servers=s.bootstrap_servers,
        group_id=None,
        auto_offset_reset="latest",
        **client_kwargs(s),
    )
    await producer.start()
    await consumer.start()
    sent_at: dict[str, float] = {}
    latencies: list[float] = []

    async def read_alerts() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for recs in batches.values():
                for r in recs:
                    key = orjson.loads(r.value)["group_key"]
                    if key in sent_at:
                        latencies.append((now - sent_at.pop(key)) * 1000)

    async def send(records: list[bytes]) -> None:
        if batch > 1:
            for i in range(0, len(records), batch):
                await producer.send(s.topic_requests, batch_envelope(records[i : i + batch]))
        else:
            for rec in records:
                await producer.send(s.topic_requests, rec)

    reader = asyncio.create_task(read_alerts())
    try:
        await asyncio.sleep(1.0)  # the consumer's partition assignment settles
        tick = 0.05
        per_tick = max(1, int(rate * tick))
        # the background is made once (up to a second of it) and sent round and round: making
        # and encoding each record takes ~3.7 us, most of a core at the rates measured, on the
        # cores the worker is measured on. Its event ids repeat (a repeat that reaches stage 2
        # counts as a redelivery); the probes are new every time.
        made_ms = int(time.time() * 1000)
        background = itertools.cycle(
            [orjson.dumps(maker.background(made_ms)) for _ in range(min(per_tick * 20, 50_000))]
        )
        start = time.time()
        while time.time() - start < seconds:
            t0 = time.time()
            now_ms = int(t0 * 1000)
            records = list(itertools.islice(background, per_tick - 1))
            # a new unknown account identifies someone: FR-008 fires at once
            acct = f"lat-acct-{uuid.uuid4().hex[:10]}"
            records.insert(
                len(records) // 2,
                orjson.dumps(maker.event(acct, "face.identify", now_ms, image_count=1)),
            )
            sent_at[acct] = time.time()
            await send(records)
            await asyncio.sleep(max(0.0, tick - (time.time() - t0)))
        await producer.flush()
        deadline = time.time() + 10
        while sent_at and time.time() < deadline:
            await asyncio.sleep(0.1)
        if sent_at:
            say(f"bench: {len(sent_at)} latency probes got no alert within 10 s")
    finally:
        reader.cancel()
        await producer.stop()
        await consumer.stop()
    return latencies


RSS_MARKS = (100_000, 1_000_000)  # the worker's RSS is read once it has counted these
RSS_READINGS = 5  # at each mark, and at the end: the lowest is reported
STALL_S = 120.0  # no new count for this long: the worker is stuck, the bench gives up


def _watch_worker(
    worker: subprocess.Popen[bytes], port: int, n_events: int, say: Say
) -> tuple[list[tuple[float, float]], dict[int, float]]:
    """Poll the worker's record count until it has counted `n_events`.

    Returns the (time, count) samples read while it ran and its RSS (MiB, its screening
    processes included) from each of RSS_MARKS that the run reaches on, and once it has
    counted every event: the lowest of RSS_READINGS readings 0.1 s apart (fewer when the run
    ends first). Mid-run, the input in flight (fetch buffers, messages being screened)
    swings RSS by tens of MiB from one poll to the next; the lowest reading is the closest
    to what the worker keeps, and the readings at the end, with the input drained, hold none.
    """
    samples: list[tuple[float, float]] = []
    rss: dict[int, float] = {}
    marks = [m for m in RSS_MARKS if m < n_events]
    readings: dict[int, list[float]] = {}  # by mark: RSS at the polls from that mark on
    last_n, last_change = 0.0, time.monotonic()
    next_report = time.monotonic() + 5
    while True:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited {worker.returncode}")
        n = _metric(port, "frwatch_events_total")
        now = time.perf_counter()
        if n > 0:
            samples.append((now, n))
        while marks and n >= marks[0]:
            readings[marks.pop(0)] = []
        for mark, got in readings.items():
            if mark not in rss:
                got.append(_rss_mib(worker.pid))
                if len(got) == RSS_READINGS:
                    rss[mark] = min(got)
        if n >= n_events:
            rss.update((mark, min(got)) for mark, got in readings.items() if mark not in rss)
            drained = []
            for _ in range(RSS_READINGS):
                drained.append(_rss_mib(worker.pid))
                time.sleep(0.1)
            rss[n_events] = min(drained)
            return samples, rss
        if n != last_n:
            last_n, last_change = n, time.monotonic()
        elif time.monotonic() - last_change > STALL_S:
            raise RuntimeError(
                f"worker counted no record for {STALL_S:g} s (at {max(n, 0):,.0f} of {n_events:,})"
            )
        if time.monotonic() >= next_report:
            say(f"bench: worker at {max(n, 0):,.0f} of {n_events:,} events")
            next_report += 5
        time.sleep(0.1)  # scraping costs the worker CPU: not too often


def _rss_report(rss: dict[int, float]) -> str:
    """`72.1 MiB after 100,000 events, 74.0 MiB after 1,000,000 (+2.6%)`."""
    parts = [f"{mib:.1f} MiB after {n:,} events" for n, mib in rss.items()]
    readings = list(rss.values())
    if len(readings) > 1 and readings[0]:
        parts[-1] += f" ({(readings[-1] - readings[0]) / readings[0]:+.1%})"
    return ", ".join(parts)


def _rate(samples: list[tuple[float, float]], total: int) -> float:
    """Records/s between the first and the last count seen while the worker was running.

    Both ends are counts read at known times, so neither the moment the first record was
    processed nor when the last one was (both between two polls) biases the rate; a run too
    short for two such polls falls back to the whole span.
    """
    running = [(t, n) for t, n in samples if n < total]
    if len(running) >= 2 and running[-1][1] > running[0][1]:
        (t0, n0), (t1, n1) = running[0], running[-1]
        return (n1 - n0) / (t1 - t0)
    if len(samples) >= 2 and samples[-1][0] > samples[0][0]:
        return total / (samples[-1][0] - samples[0][0])
    return 0.0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure_live(
    base: Settings, archive: str, n_events: int, batch: int, say: Say
) -> dict[str, Any]:
    """Everything but replay_eps, on a fresh topic of the configured broker."""
    name = f"frwatch-bench-{uuid.uuid4().hex[:8]}"
    s = _bench_settings(base, name, _free_port())
    batched = batch > 1
    asyncio.run(create_topics(s))
    accounts = [(a["account_id"].encode(), orjson.dumps(a)) for a in SAMPLE_ACCOUNTS]
    asyncio.run(_send_all(s, s.topic_accounts, iter(accounts)))
    say(f"bench: publishing {n_events:,} events to {s.topic_requests} (batch {batch}) ...")
    asyncio.run(
        _send_all(s, s.topic_requests, archive_messages([archive], batch if batched else None))
    )

    say("bench: raw aiokafka consume ...")
    raw_eps = asyncio.run(_raw_consume(s, n_events, batched))

    say("bench: minimal Faust agent (the floor) ...")
    floor = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli.bench_floor",
            s.broker,
            s.topic_requests,
            str(n_events),
            str(batch),
        ],
        capture_output=True,
        timeout=900,
        cwd=tempfile.gettempdir(),  # Faust leaves a data folder in its working directory
    )
    floor_eps = None
    if floor.returncode == 0:
        last_line = floor.stdout.splitlines()[-1]  # Faust's spinner may precede the JSON
        floor_eps = orjson.loads(last_line[last_line.index(b"{") :])["faust_floor_eps"]

    say(f"bench: the frwatch worker (store {s.store}) ...")
    with tempfile.TemporaryDirectory(prefix="frwatch-bench-worker-") as wd:
        log = open(os.path.join(wd, "worker.log"), "wb")  # noqa: SIM115
        worker = subprocess.Popen(
            [sys.executable, "-m", "streams.cli.main", "worker"],
            env=_env(s),
            cwd=wd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            try:
                samples, rss = _watch_worker(worker, s.web_port, n_events, say)
            except RuntimeError as exc:  # say why, from the worker's own last lines
                log.flush()
                with open(os.path.join(wd, "worker.log"), "rb") as fh:
                    tail = fh.read()[-2000:].decode("utf-8", "replace")
                raise RuntimeError(f"{exc}; the end of its log:\n{tail}") from None
            detector_eps = _rate(samples, n_events)
            say(f"bench: latency at {detector_eps / 2:,.0f} events/s offered ...")
            lat = asyncio.run(_latency(s, detector_eps / 2, 10.0, batch, say))
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
            log.close()
    asyncio.run(delete_topics(s))
    say(f"bench: {len(lat)} latency probes")
    say("bench: worker RSS (with its screening processes) " + _rss_report(rss))
    return {
        "store": s.store,
        "raw_consume_eps": round(raw_eps),
        "faust_floor_eps": floor_eps,
        "detector_eps": round(detector_eps),
        "ratio": round(detector_eps / raw_eps, 3) if raw_eps else None,
        "alert_latency_ms": {
            "p50": round(_percentile(lat, 0.5), 1),
            "p99": round(_percentile(lat, 0.99), 1),
        },
        "worker_rss_mib": {str(n): round(mib, 1) for n, mib in rss.items()},
    }
