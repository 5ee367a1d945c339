"""Exceptions on a real broker (SPEC 4.4): `frwatch exceptions` and the worker's feed.

Exceptions added with the CLI before the worker starts apply from its first event (the
requests are published before it starts too); one added and then removed while it runs
applies in between; a bad record on the topic is dead-lettered and not applied; the hits
metric counts what each kept from its rule, and `exceptions list` shows them. The alerts
equal those of `frwatch replay --exceptions` with the exceptions that `list --json` prints.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from scenarios import write_jsonl
from worker_harness import (
    REPO,
    Worker,
    free_port,
    frwatch,
    frwatch_env,
    read_topic,
    wait_for,
    wait_settled,
)

from topics.timestamps import parse_rfc3339_ms

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
ACCOUNTS = [
    {"account_id": "acct-approved", "org_id": "org-a", "sector": "commercial", "country": "NL"},
    {"account_id": "acct-other", "org_id": "org-a", "sector": "commercial", "country": "NL"},
    {"account_id": "acct-approved-b", "org_id": "org-b", "sector": "commercial", "country": "NL"},
    {"account_id": "acct-busy", "org_id": "org-b", "sector": "commercial", "country": "NL"},
    {"account_id": "acct-pd", "sector": "law_enforcement", "country": "US"},
]


def add(env: dict[str, str], *args: str) -> dict[str, Any]:
    out = frwatch(
        ["exceptions", "add", "--reason", "approved identification use", "--owner", "soc",
         "--expires", "30d", *args],
        env,
    )  # fmt: skip
    record: dict[str, Any] = orjson.loads(out.stdout)
    assert record["exception_id"].startswith("EX-")
    return record


def searches(account: str, subjects: range, base: int) -> list[dict[str, Any]]:
    return [
        {"event_id": f"{account}-{s}", "ts": base + s, "account_id": account,
         "operation": "face.identify", "subject_ids": [f"subj-{account}-{s}"]}
        for s in subjects
    ]  # fmt: skip


def first_ts_after(created_ms: int, span_ms: int) -> int:
    """Event time after `created_ms` with `span_ms` more inside the same hour."""
    base = created_ms + 1000
    if base // HOUR_MS != (base + span_ms) // HOUR_MS:
        base = (base // HOUR_MS + 1) * HOUR_MS + 1000  # seconds ahead: not a future timestamp
    return base


def put(env: dict[str, str], key: bytes, value: bytes) -> None:
    """A record written around the CLI, as a careless operator might."""

    async def main() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=env["FRWATCH_BROKER"], acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(env["FRWATCH_TOPIC_EXCEPTIONS"], value, key=key)
        finally:
            await producer.stop()

    asyncio.run(main())


def alerts_on_topic(env: dict[str, str]) -> list[dict[str, Any]]:
    return [
        orjson.loads(v)
        for _, v in read_topic(env["FRWATCH_BROKER"], env["FRWATCH_TOPIC_ALERTS"])
        if v
    ]


def fired(alerts: list[dict[str, Any]]) -> dict[str, tuple[str, str, int, Any]]:
    """The open revision of each alert (as it fired): replay closes every window at the end of
    its input, and the live clock has not passed these windows' close, so later revisions
    differ by design (SPEC 5)."""
    return {
        a["alert_id"]: (a["rule_id"], a["group_key"], a["observed"]["count"],
                        a["observed"]["distinct"])
        for a in alerts
        if a["status"] == "open"
    }  # fmt: skip


def listed(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    out = frwatch(["exceptions", "list", "--json"], env).stdout
    return {e["exception_id"]: e for e in map(orjson.loads, out.splitlines())}


def test_exceptions_live_equal_replay_and_count_their_hits(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env = frwatch_env(kafka_bootstrap, unique_name)
    frwatch(["topics", "create"], env)
    frwatch(["accounts", "load", str(write_jsonl(tmp_path / "accounts.jsonl", ACCOUNTS))], env)
    ex_a = add(env, "--rules", "FR-006", "--account", "acct-approved", "--ticket", "LA-1")
    ex_b = add(env, "--rules", "FR-006,FR-004", "--account", "acct-approved-b")
    # bad records around the CLI: no owner (it would keep acct-busy from FR-006), not JSON
    bad = {**ex_b, "exception_id": "EX-bad", "owner": "", "match":
           {"field": "account_id", "equals": "acct-busy"}}  # fmt: skip
    bad.pop("topic")
    put(env, b"EX-bad", orjson.dumps(bad))
    put(env, b"EX-worse", b"{not json")

    # published before the worker starts: the exceptions must apply from the first event
    base = first_ts_after(parse_rfc3339_ms(ex_b["created_at"]), 1000)
    events = searches("acct-approved", range(40), base) + searches(
        "acct-other", range(40, 60), base
    )
    events += searches("acct-approved-b", range(40), base)
    events += searches("acct-busy", range(100, 160), base)
    first = write_jsonl(tmp_path / "first.jsonl", events)
    frwatch(["publish", str(first)], env)

    worker = Worker(env, tmp_path / "w").start()
    try:
        wait_for(lambda: worker.records_counted() >= len(events), 120, "the first events", worker)
        assert worker.metric("frwatch_exceptions_active") == 2
        # a change while it runs: an exception for the police account, then its removal
        ex_pd = add(env, "--rules", "FR-001", "--account", "acct-pd")
        wait_for(lambda: worker.metric("frwatch_exceptions_active") == 3, 60, "EX-pd", worker)
        pd_ts = first_ts_after(parse_rfc3339_ms(ex_pd["created_at"]), 10)
        police = [{"event_id": f"pd-{i}", "ts": pd_ts + i, "account_id": "acct-pd",
                   "operation": "face.identify"} for i in range(2)]  # fmt: skip
        frwatch(["publish", str(write_jsonl(tmp_path / "pd1.jsonl", police[:1]))], env)
        hits_pd = lambda: worker.metric(  # noqa: E731
            "frwatch_exception_hits_total", exception_id=ex_pd["exception_id"]
        )
        wait_for(lambda: hits_pd() == 1, 60, "EX-pd keeping the first police event", worker)
        assert all(a["rule_id"] != "FR-001" for a in alerts_on_topic(env))
        frwatch(["exceptions", "remove", ex_pd["exception_id"]], env)
        wait_for(lambda: worker.metric("frwatch_exceptions_active") == 2, 60, "removal", worker)
        frwatch(["publish", str(write_jsonl(tmp_path / "pd2.jsonl", police[1:]))], env)
        wait_for(
            lambda: any(a["rule_id"] == "FR-001" for a in alerts_on_topic(env)),
            60,
            "FR-001 once the exception is removed",
            worker,
        )
        wait_settled(kafka_bootstrap, env, 60, worker)
        hits = {
            x["exception_id"]: worker.metric(
                "frwatch_exception_hits_total", exception_id=x["exception_id"]
            )
            for x in (ex_a, ex_b, ex_pd)
        }
        print(f"hits: {hits}")
        assert hits == {
            ex_a["exception_id"]: 40,
            ex_b["exception_id"]: 40,
            ex_pd["exception_id"]: 1,
        }
        worker_env = {**env, "FRWATCH_WEB_PORT": str(worker.port)}
        shown = listed(worker_env)
        assert worker.metric("frwatch_events_total", result="error") == 0
    finally:
        worker.stop()

    # `exceptions list`: what is on the topic now, active, with the worker's hits
    assert set(shown) == {ex_a["exception_id"], ex_b["exception_id"]}
    assert {e["state"] for e in shown.values()} == {"active"}
    assert shown[ex_a["exception_id"]]["hits"] == 40
    assert shown[ex_a["exception_id"]]["ticket"] == "LA-1"
    unreachable = listed({**env, "FRWATCH_WEB_PORT": str(free_port())})
    assert {e["hits"] for e in unreachable.values()} == {None}
    assert all(e["hits_unknown"].startswith("no worker metrics at") for e in unreachable.values())
    text = frwatch(["exceptions", "list"], worker_env).stdout.decode()
    assert ex_a["exception_id"] in text and "active" in text

    # removing an id that is not there: one line, exit 2
    gone = subprocess.run(
        [sys.executable, "-m", "streams.cli.main", "exceptions", "remove", ex_pd["exception_id"]],
        env=env, capture_output=True, cwd=REPO,
    )  # fmt: skip
    assert gone.returncode == 2
    assert gone.stderr.decode().count("\n") == 1 and "unknown exception id" in gone.stderr.decode()

    # the bad records were dead-lettered with their reasons, and not applied
    letters = [
        orjson.loads(v) for _, v in read_topic(kafka_bootstrap, env["FRWATCH_TOPIC_DLQ"]) if v
    ]
    on_topic = [dl for dl in letters if dl["topic"] == env["FRWATCH_TOPIC_EXCEPTIONS"]]
    assert sorted((dl["reason"], dl["field"]) for dl in on_topic) == [
        ("not_json", None),
        ("out_of_range", "owner"),
    ]
    live = fired(alerts_on_topic(env))
    assert sorted((r, g) for r, g, _, _ in live.values()) == [
        ("FR-001", "acct-pd"),  # after the removal
        ("FR-006", "org-b"),  # 60 subjects without its excepted account (EX-bad not applied)
    ]  # org-a: 40 of its 60 subjects came from the excepted account

    # replay with the exceptions `list --json` printed: the same alerts
    exceptions_file = tmp_path / "exceptions.jsonl"
    exceptions_file.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in shown.values()))
    accounts = tmp_path / "accounts.jsonl"
    archive = write_jsonl(tmp_path / "all.jsonl", events + police)
    out = frwatch(
        ["replay", "--accounts", str(accounts), "--exceptions", str(exceptions_file), str(archive)],
        env,
    )
    replayed = fired([orjson.loads(line) for line in out.stdout.splitlines() if line.strip()])
    assert replayed == live
