"""Window state you can trust (SPEC 4.1, 4.3), on a real broker, in the hard order.

Every test here publishes its traffic *before* the worker starts (or while it is down), so
the worker catches up on a backlog whose input partitions advance at different speeds: the
order in which round 1 lost alerts.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from aiokafka.partitioner import murmur2
from scenarios import scenario_archive, write_jsonl
from worker_harness import (
    Worker,
    alert_ids_on_topic,
    frwatch,
    frwatch_env,
    read_topic,
    replay_alerts,
    wait_for,
)

from streams.core.rules import builtin_rules_bytes

pytestmark = pytest.mark.integration

REQUEST_PARTITIONS = 4
HOURS = 50  # three UTC days of event time: day windows (FR-007) expire behind the clock


def _partition_of(account_id: str) -> int:
    """The requests partition `frwatch publish` sends an account's records to (Kafka's own)."""
    return (murmur2(account_id.encode()) & 0x7FFFFFFF) % REQUEST_PARTITIONS


def _prepare(bootstrap: str, name: str, tmp: Path) -> tuple[dict[str, str], Path, Path]:
    env = frwatch_env(bootstrap, name)
    accounts, events = scenario_archive(tmp, hours=HOURS)
    frwatch(["topics", "create"], env)
    frwatch(["accounts", "load", str(accounts)], env)
    return env, accounts, events


def _live_alert_ids(bootstrap: str, env: dict[str, str], worker: Worker, want: set[str]) -> None:
    wait_for(
        lambda: set(alert_ids_on_topic(bootstrap, env["FRWATCH_TOPIC_ALERTS"])) >= want,
        120,
        "every replay alert on the topic",
        worker,
    )
    live = set(alert_ids_on_topic(bootstrap, env["FRWATCH_TOPIC_ALERTS"]))
    assert live == want, f"extra live alerts: {sorted(live - want)[:5]}"


def test_a_worker_started_behind_a_multi_day_backlog_gives_the_replay_alerts(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env, accounts, events = _prepare(kafka_bootstrap, unique_name, tmp_path)
    expected, summary = replay_alerts(events, accounts, env)
    want = {a["alert_id"] for a in expected}
    assert "FR-007" in {a["rule_id"] for a in expected}
    frwatch(["publish", "--batch", "50", str(events)], env)
    worker = Worker(env, tmp_path / "w").start()
    try:
        wait_for(
            lambda: worker.records_counted() >= summary["events"],
            300,
            "every record counted",
            worker,
        )
        _live_alert_ids(kafka_bootstrap, env, worker, want)
        assert worker.metric("frwatch_events_total", result="error") == 0
        # the clock is the low watermark: it has moved, and is not past the input's end
        assert worker.metric("frwatch_watermark_lag_seconds") > 0
    finally:
        worker.stop()


def test_an_input_partition_published_days_later_loses_no_alert(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """Skew: the records of one input partition arrive after the others are three days on."""
    env, accounts, events = _prepare(kafka_bootstrap, unique_name, tmp_path)
    expected, summary = replay_alerts(events, accounts, env)
    want = {a["alert_id"] for a in expected}
    lines = events.read_bytes().splitlines()
    slow = 0
    early, late = [], []
    for line in lines:
        try:
            account = orjson.loads(line).get("account_id")
        except (orjson.JSONDecodeError, AttributeError):
            account = None
        if isinstance(account, str) and _partition_of(account) == slow:
            late.append(line)
        else:
            early.append(line)
    assert late and early
    late_rules = {
        a["rule_id"]
        for a in expected
        if a["group_by"] == "account_id" and _partition_of(a["group_key"]) == slow
    }
    assert late_rules, "the slow partition must carry alerts, or the test proves nothing"
    frwatch(["publish", str(write_jsonl(tmp_path / "early.jsonl", early))], env)
    worker = Worker(env, tmp_path / "w").start()
    try:
        wait_for(
            lambda: worker.records_counted() >= len(early),
            300,
            "the early partitions counted",
            worker,
        )
        frwatch(["publish", str(write_jsonl(tmp_path / "late.jsonl", late))], env)
        wait_for(
            lambda: worker.records_counted() >= summary["events"],
            300,
            "every record counted",
            worker,
        )
        _live_alert_ids(kafka_bootstrap, env, worker, want)
    finally:
        worker.stop()


def test_a_rule_changed_between_runs_starts_afresh_without_errors(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """SPEC 4.3: restart with FR-007 changed: no internal_error; unchanged rules continue."""
    env, _accounts, events = _prepare(kafka_bootstrap, unique_name, tmp_path)
    lines = events.read_bytes().splitlines()
    half = len(lines) // 2
    first = write_jsonl(tmp_path / "first.jsonl", lines[:half])
    second = write_jsonl(tmp_path / "second.jsonl", lines[half:])
    frwatch(["publish", str(first)], env)
    worker = Worker(env, tmp_path / "w1").start()
    try:
        wait_for(lambda: worker.records_counted() >= half, 300, "first half counted", worker)
    finally:
        worker.stop()
    changed = tmp_path / "changed.yaml"
    text = builtin_rules_bytes().decode()
    assert text.count("at_least: 20") == 1
    changed.write_text(text.replace("at_least: 20", "at_least: 25"))
    env2 = dict(env, FRWATCH_RULES=str(changed))
    frwatch(["publish", str(second)], env2)
    worker = Worker(env2, tmp_path / "w2").start()
    try:
        wait_for(
            lambda: worker.records_counted() >= len(lines) - half,
            300,
            "second half counted",
            worker,
        )
        assert worker.metric("frwatch_events_total", result="error") == 0
    finally:
        worker.stop()
    reasons = [
        orjson.loads(v).get("reason")
        for _, v in read_topic(kafka_bootstrap, env["FRWATCH_TOPIC_DLQ"])
        if v
    ]
    assert "internal_error" not in reasons
