"""Operator commands against the real broker (SPEC 6): topics create, accounts load, publish,
alerts tail. Each test has its own topics (frwatch_env with a unique name)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from scenarios import write_jsonl
from worker_harness import frwatch, frwatch_env, read_topic

from streams.cli.alert_board import alert_line
from streams.synthetic import DEFAULT_START_MS, SAMPLE_ACCOUNTS
from topics.alerts import Alert, alert_id

pytestmark = pytest.mark.integration

HOUR = 3_600_000


def json_lines(text: bytes | str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


async def _describe(bootstrap: str, topics: list[str]) -> dict[str, dict[str, Any]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        )
        meta = await admin.describe_topics(topics)
    finally:
        await admin.close()
    out: dict[str, dict[str, Any]] = {t: {} for t in topics}
    for response in configs:
        for error_code, _msg, _type, name, entries in (r[:5] for r in response.resources):
            assert error_code == 0, (name, _msg)
            out[name]["config"] = {e[0]: e[1] for e in entries}
    for m in meta:
        out[m["topic"]]["partitions"] = len(m["partitions"])
    return out


def describe(bootstrap: str, topics: list[str]) -> dict[str, dict[str, Any]]:
    """Topic name -> {"config": {name: value}, "partitions": n}, as the broker reports them."""
    return asyncio.run(_describe(bootstrap, topics))


async def _produce(
    bootstrap: str,
    topic: str,
    messages: list[tuple[bytes | None, bytes | None]],
    partition: int | None,
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value=value, key=key, partition=partition)
    finally:
        await producer.stop()


def produce(
    bootstrap: str,
    topic: str,
    messages: list[tuple[bytes | None, bytes | None]],
    partition: int | None = None,
) -> None:
    asyncio.run(_produce(bootstrap, topic, messages, partition))


# --- topics create --------------------------------------------------------------------------


def test_topics_create_is_idempotent_and_sets_compaction(
    kafka_bootstrap: str, unique_name: str
) -> None:
    env = frwatch_env(kafka_bootstrap, unique_name)
    first = json_lines(frwatch(["topics", "create"], env).stdout)
    public = [
        f"{unique_name}.{t}"
        for t in ("requests", "accounts", "alerts", "dlq", "exceptions", "rules")
    ]
    internal = [f"{unique_name}-detect", f"{unique_name}-windows-changelog"]
    assert [d["topic"] for d in first] == public + internal
    assert {d["state"] for d in first} == {"created"}
    second = json_lines(frwatch(["topics", "create"], env).stdout)
    assert [d["topic"] for d in second] == public + internal
    assert {d["state"] for d in second} == {"exists"}

    topics = describe(kafka_bootstrap, public + internal)
    requests, accounts, alerts, dlq, exceptions, rules = (topics[t] for t in public)
    # the latest exception per id, the latest deployed rules file (SPEC 1)
    for compacted in (exceptions, rules):
        assert compacted["config"]["cleanup.policy"] == "compact"
        assert compacted["partitions"] == 1
    assert accounts["config"]["cleanup.policy"] == "compact"
    assert accounts["partitions"] == 1  # one partition: the latest record wins, in topic order
    assert alerts["config"]["cleanup.policy"] == "compact,delete"
    assert int(alerts["config"]["retention.ms"]) == 90 * 24 * HOUR
    assert requests["config"]["cleanup.policy"] == "delete"
    assert requests["partitions"] == 4  # FRWATCH_PARTITIONS
    assert dlq["config"]["cleanup.policy"] == "delete"
    assert topics[f"{unique_name}-windows-changelog"]["config"]["cleanup.policy"] == "compact"
    assert topics[f"{unique_name}-detect"]["partitions"] == 4


def test_topics_create_requests_partitions_flag(kafka_bootstrap: str, unique_name: str) -> None:
    env = frwatch_env(kafka_bootstrap, unique_name)
    frwatch(["topics", "create", "--requests-partitions", "6"], env)
    topics = describe(kafka_bootstrap, [f"{unique_name}.requests", f"{unique_name}-detect"])
    assert topics[f"{unique_name}.requests"]["partitions"] == 6
    assert topics[f"{unique_name}-detect"]["partitions"] == 4


# --- accounts load --------------------------------------------------------------------------


def test_accounts_load_keys_records_by_account_id(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env = frwatch_env(kafka_bootstrap, unique_name)
    frwatch(["topics", "create"], env)
    rows: list[Any] = [
        *SAMPLE_ACCOUNTS,
        {"account_id": "acct-bad", "sector": "police"},  # invalid: published, the worker rejects
        {"account_id": "acct-uni", "deleted": True},
    ]
    path = write_jsonl(tmp_path / "accounts.jsonl", rows)
    proc = frwatch(["accounts", "load", str(path)], env)
    assert orjson.loads(proc.stderr.strip().splitlines()[-1]) == {
        "topic": f"{unique_name}.accounts",
        "records": len(rows),
    }
    msgs = read_topic(kafka_bootstrap, f"{unique_name}.accounts")
    # every line as it is, in file order (one partition), keyed by its account_id
    assert msgs == [(r["account_id"].encode(), orjson.dumps(r)) for r in rows]


def test_accounts_load_with_lines_without_account_id_does_not_fail(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """A compacted topic refuses messages without a key (the broker rejects the whole batch),
    so lines with no string account_id cannot be published as they are.

    Today `frwatch accounts load` sends them unkeyed: the broker answers InvalidRecordException
    ("Compacted topic cannot accept message without key"), the command dies with a traceback
    (aiokafka UnknownError) and none of the valid records of that batch is loaded. SPEC 3 asks
    that a bad account record be rejected on its own while the others apply.
    """
    env = frwatch_env(kafka_bootstrap, unique_name)
    frwatch(["topics", "create"], env)
    good = list(SAMPLE_ACCOUNTS[:4])
    keyless: list[Any] = [{"org_id": "org-without-account"}, b"not json at all", b"null"]
    rows: list[Any] = [good[0], keyless[0], good[1], keyless[1], good[2], keyless[2], good[3]]
    path = write_jsonl(tmp_path / "accounts.jsonl", rows)
    frwatch(["accounts", "load", str(path)], env)
    msgs = read_topic(kafka_bootstrap, f"{unique_name}.accounts")
    keyless_values = {r if isinstance(r, bytes) else orjson.dumps(r) for r in keyless}
    # the valid records all arrive, keyed, in file order; keyless lines are left out (or
    # published under some key for the worker to dead-letter), never a reason to fail
    assert [m for m in msgs if m[1] not in keyless_values] == [
        (r["account_id"].encode(), orjson.dumps(r)) for r in good
    ]
    assert all(k is not None for k, _ in msgs)


# --- publish --------------------------------------------------------------------------------


def _records(n: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"pub-{i:03d}",
            "ts": DEFAULT_START_MS + i,
            "account_id": f"acct-{i % 4}",
            "operation": "face.verify",
        }
        for i in range(n)
    ]


def test_publish_batch_7_of_20_records_gives_3_messages(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env = frwatch_env(kafka_bootstrap, unique_name)
    frwatch(["topics", "create"], env)
    records = _records(20)
    path = write_jsonl(tmp_path / "events.jsonl", records)
    proc = frwatch(["publish", "--batch", "7", str(path)], env)
    summary = orjson.loads(proc.stderr.strip().splitlines()[-1])
    assert summary["topic"] == f"{unique_name}.requests" and summary["messages"] == 3
    msgs = read_topic(kafka_bootstrap, f"{unique_name}.requests")
    assert len(msgs) == 3
    batches = [orjson.loads(v or b"")["records"] for _, v in msgs]
    assert sorted(len(b) for b in batches) == [6, 7, 7]
    # each message holds consecutive records of the file, in file order
    for batch in sorted(batches, key=lambda b: str(b[0]["event_id"])):
        ids = [r["event_id"] for r in batch]
        first = int(ids[0].split("-")[1])
        assert ids == [f"pub-{i:03d}" for i in range(first, first + len(ids))]
    assert sorted(r["event_id"] for b in batches for r in b) == [r["event_id"] for r in records]


def test_publish_without_batch_sends_each_line_keyed_by_account(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env = frwatch_env(kafka_bootstrap, unique_name)
    frwatch(["topics", "create"], env)
    rows: list[Any] = [*_records(5), b"not json", {"records": _records(2)}]
    path = write_jsonl(tmp_path / "events.jsonl", rows)
    proc = frwatch(["publish", str(path)], env)
    assert orjson.loads(proc.stderr.strip().splitlines()[-1])["messages"] == len(rows)
    msgs = read_topic(kafka_bootstrap, f"{unique_name}.requests")
    sent = {(r if isinstance(r, bytes) else orjson.dumps(r)) for r in rows}
    assert {v for _, v in msgs} == sent and len(msgs) == len(rows)
    for key, value in msgs:
        doc = orjson.loads(value) if value and value.startswith(b"{") else None
        want = doc.get("account_id") if isinstance(doc, dict) else None
        assert key == (want.encode() if want else None)


# --- alerts tail ----------------------------------------------------------------------------


def _alert_docs(n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        start = DEFAULT_START_MS - DEFAULT_START_MS % HOUR + i * HOUR
        alert = Alert(
            alert_id=alert_id("FR-001", "acct-metro-pd", start),
            rule_id="FR-001",
            title="Facial recognition by or for US law enforcement",
            clause="Prohibited: facial recognition by or for a police department in the US.",
            severity="critical",
            group_by="account_id",
            group_key="acct-metro-pd",
            account={
                "account_id": "acct-metro-pd",
                "org_id": "org-metro",
                "org_name": "Metro City Police",
                "sector": "law_enforcement",
                "acting_for": None,
                "country": "US",
            },
            window_start_ms=start,
            window_end_ms=start + HOUR,
            count=1 + i,
            distinct=None,
            samples=({"event_id": f"ev-{i}", "ts": start + 60_000, "operation": "face.identify"},),
            rule_version="0" * 64,
            rules_sha256="0" * 64,
        )
        out.append((alert.alert_id.encode(), alert.to_json("live", start + 61_000, "test")))
    return out


def test_alerts_tail_prints_human_lines_and_raw_json(
    kafka_bootstrap: str, unique_name: str
) -> None:
    env = frwatch_env(kafka_bootstrap, unique_name)
    frwatch(["topics", "create"], env)
    docs = _alert_docs(2)
    produce(kafka_bootstrap, f"{unique_name}.alerts", list(docs))
    human = frwatch(["alerts", "tail", "--from-beginning", "--max", "2"], env, timeout=90)
    lines = human.stdout.decode().splitlines()
    assert sorted(lines) == sorted(alert_line(orjson.loads(v)) for _, v in docs)
    for line in lines:
        assert "CRITICAL" in line and "FR-001" in line and "account_id=acct-metro-pd" in line
        assert "{" not in line
    raw = frwatch(["alerts", "tail", "--from-beginning", "--json", "--max", "2"], env, timeout=90)
    assert sorted(raw.stdout.splitlines()) == sorted(v for _, v in docs)


def test_alerts_tail_stops_after_max_alerts(kafka_bootstrap: str, unique_name: str) -> None:
    """`--max N`: "stop after N alerts" (its help text), even when more arrive in one fetch.

    Today the loop checks N only between fetches, so every alert of the last fetch is printed.
    """
    env = frwatch_env(kafka_bootstrap, unique_name)
    frwatch(["topics", "create"], env)
    docs = _alert_docs(3)
    produce(kafka_bootstrap, f"{unique_name}.alerts", list(docs), partition=0)
    proc = frwatch(["alerts", "tail", "--from-beginning", "--json", "--max", "2"], env, timeout=90)
    assert proc.stdout.splitlines() == [v for _, v in docs[:2]]


def test_alerts_tail_survives_unreadable_messages(kafka_bootstrap: str, unique_name: str) -> None:
    """A compacted alerts topic may hold tombstones (null values) and foreign junk."""
    env = frwatch_env(kafka_bootstrap, unique_name)
    frwatch(["topics", "create"], env)
    (doc,) = _alert_docs(1)
    messages: list[tuple[bytes | None, bytes | None]] = [
        (b"junk", b"not json"),
        (b"gone", None),
        (b"list", b"[1, 2]"),
        doc,
    ]
    produce(kafka_bootstrap, f"{unique_name}.alerts", messages, partition=0)
    human = frwatch(["alerts", "tail", "--from-beginning", "--max", "4"], env, timeout=90)
    lines = human.stdout.decode().splitlines()
    assert lines[-1] == alert_line(orjson.loads(doc[1]))
    assert len(lines) == 4
    assert lines[0].startswith("(unreadable alert at offset")
    assert lines[1].startswith("(deleted alert at offset")  # the tombstone
    assert lines[2].startswith("(unreadable alert at offset")
    raw = frwatch(["alerts", "tail", "--from-beginning", "--json", "--max", "4"], env, timeout=90)
    assert doc[1] in raw.stdout.splitlines()
