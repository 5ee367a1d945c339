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
    wait_for,
)

from streams.core.rules import builtin_rules_bytes
from topics.requests import parse_event_time

pytestmark = pytest.mark.integration

REQUEST_PARTITIONS = 4
HOURS = 50  # three UTC days of event time: day windows (FR-007) expire behind the clock


def _partition_of(account_id: str) -> int:
    """The requests partition `frwatch publish` sends an account's records to (Kafka's own)."""
    return (murmur2(account_id.encode()) & 0x7FFFFFFF) % REQUEST_PARTITIONS


def _prepare(bootstrap: str, name: str, tmp: Path) -> tuple[dict[str, str], Path, Path]:
    env = frwatch_env(bootstrap, name)
    accounts, scenario = scenario_archive(tmp, hours=HOURS)
    # an archive as a requests topic holds it: in arrival order, roughly by event time (the
    # scenario generator appends each scenario's hours after the others, up to 50 h late:
    # then replay's clock, the highest event time so far, drops windows a live worker keeps)
    keyed, last = [], 0
    for line in scenario.read_bytes().splitlines():
        try:
            obj = orjson.loads(line)
            ts = obj.get("ts") if isinstance(obj, dict) else None
            last = int(parse_event_time(ts)) if ts is not None else last
        except Exception:  # a malformed line keeps its place after the line before it
            pass
        keyed.append((last, line))
    keyed.sort(key=lambda k: k[0])
    events = write_jsonl(tmp / "ordered.jsonl", [line for _, line in keyed])
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
    extra = [
        (a["rule_id"], a["group_key"], a["window"]["start"], a["observed"])
        for _, v in read_topic(bootstrap, env["FRWATCH_TOPIC_ALERTS"])
        if v and (a := orjson.loads(v))["alert_id"] in live - want
    ]
    assert live == want, f"extra live alerts: {extra[:8]}"


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
