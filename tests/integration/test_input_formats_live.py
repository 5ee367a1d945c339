"""The live worker with FRWATCH_INPUT_FORMAT=azure-resource-log against the real broker.

Azure resource logs published as Event Hubs messages give the alerts that `frwatch replay
--input-format azure-resource-log` gives for the same archive; malformed records go to the
DLQ with the source path named; Audit and other non-request records count as skipped.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from scenarios import write_jsonl
from worker_harness import (
    Worker,
    alert_ids_on_topic,
    frwatch,
    frwatch_env,
    read_topic,
    wait_for,
)

from streams.app.faust_app import SCREEN_ELSEWHERE_BYTES

pytestmark = pytest.mark.integration
SAMPLES = Path(__file__).parents[1] / "unit" / "topics" / "fixtures" / "azure"


def azure_archive(tmp: Path) -> Path:
    """The samples, and one Event Hubs message big enough for a screening process."""
    face = (SAMPLES / "face-eventhub.jsonl").read_bytes().splitlines()
    first = orjson.loads(face[0])["records"]
    audit, identify = first[0], first[1]
    big = []
    for i in range(40):
        rec = dict(identify)
        rec["correlationId"] = f"{i:08d}-5f6a-4b7c-9d8e-0f1a2b3c4d5e"
        # over two hours: FR-001 fires in each of them
        rec["time"] = f"2026-11-18T{8 + i // 20:02d}:{i % 60:02d}:07.1234567Z"
        big.append(rec)
        if i % 10 == 0:
            big.append(audit)
    big_message = orjson.dumps({"records": big})
    assert len(big_message) > SCREEN_ELSEWHERE_BYTES
    malformed = (SAMPLES / "malformed.jsonl").read_bytes().splitlines()
    return write_jsonl(tmp / "azure.jsonl", [*face, big_message, *malformed])


def test_azure_format_live_equals_replay_and_dead_letters_name_the_source(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env = frwatch_env(kafka_bootstrap, unique_name, FRWATCH_INPUT_FORMAT="azure-resource-log")
    archive = azure_archive(tmp_path)
    accounts = SAMPLES / "accounts.jsonl"
    replayed = frwatch(["replay", "--accounts", str(accounts), str(archive)], env)
    expected = [orjson.loads(line) for line in replayed.stdout.splitlines()]
    expected = [a for a in expected if a["status"] == "open"]  # the alerts, not revisions
    summary = orjson.loads(replayed.stderr.decode().strip().splitlines()[-1])
    assert sorted({a["rule_id"] for a in expected}) == ["FR-001", "FR-008"]
    assert len([a for a in expected if a["rule_id"] == "FR-001"]) == 3  # 07h, 08h, 09h
    assert summary["skipped"] == 3 + 4 and summary["malformed"] == 3
    frwatch(["topics", "create"], env)
    frwatch(["accounts", "load", str(accounts)], env)
    frwatch(["publish", str(archive)], env)
    worker = Worker(env, tmp_path / "w").start()
    try:
        wait_for(
            lambda: worker.records_counted() >= summary["events"],
            120,
            "every record counted",
            worker,
        )
        want = {a["alert_id"] for a in expected}
        wait_for(
            lambda: set(alert_ids_on_topic(kafka_bootstrap, env["FRWATCH_TOPIC_ALERTS"])) >= want,
            30,
            "all alerts on the topic",
            worker,
        )
        # the screening process loaded the same format (its hello said so)
        assert "screens input in its own process" not in worker.log_tail(400)
        live = alert_ids_on_topic(kafka_bootstrap, env["FRWATCH_TOPIC_ALERTS"])
        assert set(live) == want and len(live) == len(want)
        assert worker.records_counted() == summary["events"]
        assert worker.metric("frwatch_events_total", result="skipped") == summary["skipped"]
        assert worker.metric("frwatch_events_total", result="malformed") == summary["malformed"]
        assert worker.metric("frwatch_events_total", result="duplicate") == summary["duplicates"]
        dlq = wait_for(
            lambda: (
                (d := read_topic(kafka_bootstrap, env["FRWATCH_TOPIC_DLQ"])) and len(d) >= 3 and d
            ),
            30,
            "dead letters",
            worker,
        )
    finally:
        worker.stop()
    letters = sorted((orjson.loads(v) for _, v in dlq), key=lambda d: d["field"])
    assert [(d["reason"], d["field"]) for d in letters] == [
        ("missing_field", "account_id"),
        ("wrong_type", "model"),
        ("missing_field", "ts"),
    ]
    assert letters[0]["detail"] == (
        "account_id from resourceId (the segment after subscriptions): missing"
    )
    assert letters[1]["detail"].startswith(
        "model from properties.modelName: properties is a string that is not JSON"
    )
    assert letters[2]["detail"] == "ts from time or timeStamp: missing"
    sent = orjson.loads((SAMPLES / "malformed.jsonl").read_bytes())["records"]
    # each dead letter holds its record as sent, not what it was mapped to
    assert sorted(orjson.loads(d["raw"])["correlationId"] for d in letters) == sorted(
        r["correlationId"] for r in sent[:3]
    )
