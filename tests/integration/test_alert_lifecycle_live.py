"""The alert lifecycle live (SPEC 5), on a real broker: the worker's last revision of every
alert_id equals replay's, also across a kill -9, and revisions never go backwards."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import murmur2
from lifecycle_archive import (
    FR001_ID,
    FR006_ID,
    HOUR,
    T0,
    account_lines,
    last_revisions,
    lifecycle_events,
)
from scenarios import write_jsonl
from worker_harness import Worker, frwatch, frwatch_env, read_topic, wait_for

pytestmark = pytest.mark.integration

REQUEST_PARTITIONS = 4


def _partition_of(account_id: str) -> int:
    return (murmur2(account_id.encode()) & 0x7FFFFFFF) % REQUEST_PARTITIONS


def clock_events(ts: int) -> list[dict[str, Any]]:
    """One late event per input partition that matches no rule: it moves the retention
    clock (the low watermark over the partitions) past the windows' end + close_after."""
    out: dict[int, dict[str, Any]] = {}
    i = 0
    while len(out) < REQUEST_PARTITIONS:
        account = f"acct-clock-{i}"
        out.setdefault(
            _partition_of(account),
            {"event_id": f"clock-{i}", "ts": ts, "account_id": account, "operation": "embeddings"},
        )
        i += 1
    return list(out.values())


def _prepare(bootstrap: str, name: str, tmp: Path) -> tuple[dict[str, str], Path, Path, int]:
    env = frwatch_env(bootstrap, name)
    events = [*lifecycle_events(), *clock_events(T0 + 2 * HOUR)]
    archive = write_jsonl(tmp / "events.jsonl", events)
    accounts = write_jsonl(tmp / "accounts.jsonl", account_lines())
    frwatch(["topics", "create"], env)
    frwatch(["accounts", "load", str(accounts)], env)
    return env, accounts, archive, len(events)


def _replayed(archive: Path, accounts: Path, env: dict[str, str]) -> dict[str, tuple[Any, ...]]:
    proc = frwatch(["replay", "--accounts", str(accounts), str(archive)], env)
    return _figures([orjson.loads(line) for line in proc.stdout.splitlines() if line.strip()])


def _figures(alerts: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    return {
        aid: (a["revision"], a["status"], a["observed"]["count"], a["observed"]["distinct"])
        for aid, a in last_revisions(alerts).items()
    }


def _on_topic(bootstrap: str, env: dict[str, str]) -> list[dict[str, Any]]:
    return [orjson.loads(v) for _, v in read_topic(bootstrap, env["FRWATCH_TOPIC_ALERTS"]) if v]


def _closed(bootstrap: str, env: dict[str, str], want: dict[str, tuple[Any, ...]]) -> bool:
    return _figures(_on_topic(bootstrap, env)) == want


def _wait_closed(
    bootstrap: str, env: dict[str, str], want: dict[str, tuple[Any, ...]], s: float, w: Worker
) -> None:
    try:
        wait_for(lambda: _closed(bootstrap, env, want), s, "replay's last revisions", w)
    except AssertionError as exc:
        got = _figures(_on_topic(bootstrap, env))
        raise AssertionError(f"last revisions live {got} != replay {want}\n{exc}") from None


def _never_backwards(alerts: list[dict[str, Any]]) -> None:
    seen: dict[str, list[int]] = {}
    for a in alerts:  # one alert_id is one partition of the alerts topic: in order
        seen.setdefault(a["alert_id"], []).append(a["revision"])
    for aid, revisions in seen.items():
        assert revisions == sorted(revisions), f"{aid} went backwards: {revisions}"


def test_live_last_revisions_equal_replay(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env, accounts, archive, _n = _prepare(kafka_bootstrap, unique_name, tmp_path)
    want = _replayed(archive, accounts, env)
    assert set(want) == {FR001_ID, FR006_ID}
    assert all(status == "closed" for _, status, _, _ in want.values())
    # one record per message, keyed by account: each group arrives in archive order (a batch
    # message goes to any partition, and then which delivery of an event_id comes first differs)
    frwatch(["publish", str(archive)], env)
    worker = Worker(env, tmp_path / "w").start()
    try:
        _wait_closed(kafka_bootstrap, env, want, 240, worker)
        alerts = _on_topic(kafka_bootstrap, env)
        _never_backwards(alerts)
        assert worker.metric("frwatch_alerts_total") == 2
        assert worker.metric("frwatch_alert_revisions_total", status="open") == 2
        assert worker.metric("frwatch_alert_revisions_total", status="update") == 5
        assert worker.metric("frwatch_alert_revisions_total", status="closed") == 2
        print(f"\nlive lifecycle: {len(alerts)} revisions, last {want}")
    finally:
        worker.stop()


def test_live_last_revisions_equal_replay_across_a_kill(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env, accounts, archive, n = _prepare(kafka_bootstrap, unique_name, tmp_path)
    want = _replayed(archive, accounts, env)
    frwatch(["publish", str(archive)], env)
    first = Worker(env, tmp_path / "w1").start()
    wait_for(lambda: first.records_counted() >= n // 3, 150, "a third of the records", first)
    first.kill(signal.SIGKILL)
    partial = _figures(_on_topic(kafka_bootstrap, env))
    assert partial != want, "the kill must land mid-archive"
    second = first.start()
    try:
        _wait_closed(kafka_bootstrap, env, want, 300, second)
        alerts = _on_topic(kafka_bootstrap, env)
        _never_backwards(alerts)
        print(f"\nlive lifecycle across kill -9: {len(alerts)} revisions; before: {partial}")
    finally:
        second.stop()
