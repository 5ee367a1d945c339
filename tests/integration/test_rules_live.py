"""Rule changes on a running detector (SPEC 4.3), on a real broker.

The same change three ways: a restart with another rules file, SIGHUP after the file was
edited, and `frwatch rules deploy` to a worker that follows the rules topic. FR-007 changes
(20 enrolments -> 2), FR-005 does not: FR-005's window goes on exactly, FR-007's starts
afresh, nothing is an internal error, and a version that does not validate is refused while
alerts keep flowing. The second half of the traffic goes in batches big enough for the
screening processes, so they switch too.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from scenarios import write_jsonl
from worker_harness import REPO, Worker, frwatch, frwatch_env, read_topic, wait_for

from streams.core.rules import builtin_rules_bytes, parse_rules

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
CATALOG = builtin_rules_bytes()
CHANGED = CATALOG.replace(b"at_least: 20", b"at_least: 2")
BROKEN = CATALOG.replace(b"window: 24h", b"window: 24 hours")
ENROLLER, SEARCHER, LATE = "acct-enroller", "acct-searcher", "acct-late"
# an ignored extra field: batches of these records are screened in the screening processes
PADDING = "x" * 2000


def _accounts(tmp: Path) -> Path:
    return write_jsonl(
        tmp / "accounts.jsonl",
        [
            {"account_id": a, "org_id": f"org-{a}", "sector": "commercial", "country": "US"}
            for a in (ENROLLER, SEARCHER, LATE)
        ],
    )


def _event(n: int, account: str, operation: str, hour: int, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"{account}-{operation}-{n}",
        "ts": hour + 60_000 + n,
        "account_id": account,
        "operation": operation,
        "note": PADDING,
        **extra,
    }


def _vision(n: int, account: str, hour: int) -> dict[str, Any]:
    intent = {"label": "identify_person", "score": 0.95}
    return _event(n, account, "chat.completions", hour, image_count=1, intent=intent)


def _rules_metric(worker: Worker, sha: str) -> bool:
    return worker.metric("frwatch_rules_info", rules_sha256=sha) == 1


def _alerts(env: dict[str, str]) -> list[dict[str, Any]]:
    """The alerts on the topic: their `open` revisions."""
    return [
        doc
        for _, v in read_topic(env["FRWATCH_BROKER"], env["FRWATCH_TOPIC_ALERTS"])
        if v and (doc := orjson.loads(v))["status"] == "open"
    ]


def _put_on_rules_topic(env: dict[str, str], data: bytes) -> None:
    """What an operator bypassing `rules deploy` would write: the bytes under key `current`."""

    async def main() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=env["FRWATCH_BROKER"], acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(env["FRWATCH_TOPIC_RULES"], data, key=b"current")
        finally:
            await producer.stop()

    asyncio.run(main())


@pytest.mark.parametrize("how", ["restart", "sighup", "deploy"])
def test_a_rule_change_continues_unchanged_rules_and_starts_changed_ones_afresh(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, how: str
) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_bytes(CATALOG)
    source = "kafka:" if how == "deploy" else str(rules_file)
    env = frwatch_env(kafka_bootstrap, unique_name, FRWATCH_RULES=source)
    frwatch(["topics", "create"], env)
    frwatch(["accounts", "load", str(_accounts(tmp_path))], env)
    hour = (int(time.time() * 1000) - 90 * 60_000) // HOUR_MS * HOUR_MS
    # before: 20 enrolments (FR-007 still needs an identification), 2 of FR-005's 3
    before = [_event(i, ENROLLER, "face_list.add_face", hour) for i in range(20)]
    before += [_vision(i, SEARCHER, hour) for i in range(2)]
    frwatch(["publish", str(write_jsonl(tmp_path / "before.jsonl", before))], env)
    worker = Worker(env, tmp_path / "w").start()
    catalog_sha = parse_rules(CATALOG, "x").sha256
    changed = parse_rules(CHANGED, "x")
    try:
        wait_for(lambda: worker.records_counted() >= len(before), 120, "the first part", worker)
        assert _rules_metric(worker, catalog_sha)
        if how == "restart":
            worker.stop()
            rules_file.write_bytes(CHANGED)
            worker = Worker(env, tmp_path / "w").start()
        elif how == "sighup":
            rules_file.write_bytes(CHANGED)
            assert worker.proc is not None
            worker.proc.send_signal(signal.SIGHUP)
        else:
            changed_file = tmp_path / "changed.yaml"
            changed_file.write_bytes(CHANGED)
            out = frwatch(["rules", "deploy", str(changed_file)], env)
            assert orjson.loads(out.stdout)["rules_sha256"] == changed.sha256
        wait_for(lambda: _rules_metric(worker, changed.sha256), 60, "the new rules", worker)
        if how != "restart":
            assert worker.metric("frwatch_rules_changes_total", result="applied") == 1
        # after: FR-005's third event; for FR-007 an identification, then two enrolments
        after = [
            _vision(2, SEARCHER, hour),
            _event(100, ENROLLER, "face.identify", hour),
            _event(101, ENROLLER, "face_list.add_face", hour),
            _event(102, ENROLLER, "face_list.add_face", hour),
        ]
        frwatch(["publish", "--batch", "4", str(write_jsonl(tmp_path / "after.jsonl", after))], env)
        wait_for(lambda: len(_alerts(env)) >= 2, 120, "the alerts after the change", worker)
        if how != "restart":
            wait_for(
                lambda: "screening processes switched" in worker.log_path.read_text(),
                60,
                "the screening processes on the new rules",
                worker,
            )
        if how == "sighup":
            rules_file.write_bytes(BROKEN)
            assert worker.proc is not None
            worker.proc.send_signal(signal.SIGHUP)
        elif how == "deploy":
            broken_file = tmp_path / "broken.yaml"
            broken_file.write_bytes(BROKEN)
            refused = subprocess.run(
                [sys.executable, "-m", "streams.cli.main", "rules", "deploy", str(broken_file)],
                env=env,
                capture_output=True,
                cwd=REPO,
            )
            assert refused.returncode == 2
            assert refused.stderr.decode().strip() == (
                f"frwatch rules deploy: error: {broken_file}: rule FR-007: field window: "
                "'24 hours' is not a duration like 30m, 1h or 1d (nothing deployed)"
            )
            _put_on_rules_topic(env, BROKEN)  # bypassing the CLI: the worker refuses it
        if how != "restart":
            wait_for(
                lambda: worker.metric("frwatch_rules_changes_total", result="refused") == 1,
                60,
                "the broken version refused",
                worker,
            )
            assert _rules_metric(worker, changed.sha256)  # the version in force stays
            late = [_vision(i, LATE, hour) for i in range(3)]
            frwatch(["publish", str(write_jsonl(tmp_path / "late.jsonl", late))], env)
            wait_for(lambda: len(_alerts(env)) >= 3, 120, "alerts after the refusal", worker)
        assert worker.metric("frwatch_events_total", result="error") == 0
    finally:
        worker.stop()
    got = {(a["rule_id"], a["group_key"]): a for a in _alerts(env)}
    want = {("FR-005", SEARCHER), ("FR-007", ENROLLER)}
    if how != "restart":
        want.add(("FR-005", LATE))
    assert set(got) == want
    # FR-005's window went on: the two events before the change count with the third
    assert got[("FR-005", SEARCHER)]["observed"]["count"] == 3
    # FR-007 started afresh: the identification and the two enrolments after the change, not
    # the 20 before (counted on, it would have fired at the identification with 21)
    fr7 = got[("FR-007", ENROLLER)]
    assert fr7["observed"]["count"] == 3
    assert fr7["detector"]["rule_version"] == changed.by_id("FR-007").version
    assert fr7["detector"]["rules_sha256"] == changed.sha256
    letters = [
        orjson.loads(v) for _, v in read_topic(kafka_bootstrap, env["FRWATCH_TOPIC_DLQ"]) if v
    ]
    assert [dl for dl in letters if dl.get("reason") == "internal_error"] == []


def test_a_worker_that_follows_the_rules_topic_starts_with_the_deployed_version(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """A restart of a `kafka:` worker reads the rules topic before any request."""
    env = frwatch_env(kafka_bootstrap, unique_name, FRWATCH_RULES="kafka:")
    frwatch(["topics", "create"], env)
    frwatch(["accounts", "load", str(_accounts(tmp_path))], env)
    changed_file = tmp_path / "changed.yaml"
    changed_file.write_bytes(CHANGED)
    frwatch(["rules", "deploy", str(changed_file)], env)
    _put_on_rules_topic(env, BROKEN)  # the last record does not validate: the one before holds
    hour = (int(time.time() * 1000) - 90 * 60_000) // HOUR_MS * HOUR_MS
    events = [_event(i, ENROLLER, "face_list.add_face", hour) for i in range(2)]
    events.append(_event(9, ENROLLER, "face.identify", hour))
    frwatch(["publish", str(write_jsonl(tmp_path / "events.jsonl", events))], env)
    worker = Worker(env, tmp_path / "w").start()
    try:
        # under the catalog 2 enrolments fire nothing: under the deployed version FR-007 fires
        wait_for(lambda: len(_alerts(env)) >= 1, 120, "FR-007 under the deployed rules", worker)
        assert _rules_metric(worker, parse_rules(CHANGED, "x").sha256)
    finally:
        worker.stop()
    assert [a["rule_id"] for a in _alerts(env)] == ["FR-007"]
