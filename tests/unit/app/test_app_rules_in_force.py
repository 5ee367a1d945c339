"""Live rule changes (SPEC 4.3): `RulesInForce`, and the stages switching between messages.

Pure: the router and the detect stage are the real ones over a dict table, fed the way the
worker's agents feed them; the screening of a message is the real `Screen`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRecord

from streams.app.detection import DetectStage
from streams.app.routing import Router, Screen
from streams.app.rules_in_force import RULES_KEY, RulesFeed, RulesInForce, rules_snapshot
from streams.core.rules import RuleSet, builtin_rules_bytes, parse_rules
from streams.core.state import split_window_key
from streams.synthetic import DEFAULT_START_MS, HOUR_MS, sample_directory
from topics.alerts import Alert
from topics.stage2 import watermark_message

CATALOG = builtin_rules_bytes()
RULES = parse_rules(CATALOG, "catalog.yaml")
# FR-007 changed (20 enrolments -> 2), FR-005 untouched, FR-008 disabled
CHANGED = (
    CATALOG.decode()
    .replace("at_least: 20", "at_least: 2")
    .replace("  - id: FR-008\n", "  - id: FR-008\n    enabled: false\n")
    .encode()
)
BROKEN = CATALOG.decode().replace("window: 24h", "window: 24 hours").encode()
PARTITIONS = 4
HOUR0 = DEFAULT_START_MS - DEFAULT_START_MS % HOUR_MS
NOW = DEFAULT_START_MS + 400 * 24 * HOUR_MS
ACCT = "acct-retail-east"  # a known, non-law-enforcement account (streams.synthetic)


class Worker:
    """A router, a detect stage and the rules in force, switched as the worker switches them."""

    def __init__(self, table: dict[str, Any] | None = None) -> None:
        self.in_force = RulesInForce(RULES, CATALOG)
        self.router = Router(RULES, sample_directory(), PARTITIONS)
        self.table: dict[str, Any] = {} if table is None else table
        self.stage = DetectStage(RULES, self.table, PARTITIONS)
        self.in_force.listen(lambda rules, _data: self.router.set_rules(rules))
        self.in_force.listen(lambda rules, _data: self.stage.set_rules(rules))
        self.alerts: list[Alert] = []
        self.errors = 0
        self.offset = 0

    def feed(self, record: dict[str, Any]) -> None:
        routed = self.router.route(orjson.dumps(record), "api.requests", 0, 0, 0, NOW)
        for part, items in routed.forwards.items():
            out = self.stage.observe(orjson.dumps({"items": items}), "d", part, self.offset)
            self.offset += 1
            self.alerts.extend(a for a, _ in out.alerts)
            self.errors += out.error
            self.stage.store.flush()
        self.tick()

    def tick(self) -> None:
        """A watermark to every detect partition, then expiry as the detect agent runs it."""
        mark = watermark_message(1, [(0, HOUR0, False)])
        for part in range(PARTITIONS):
            self.stage.report(part, mark)
            for key in self.stage.expired_keys(part):
                self.stage.store.drop(key)

    def fired(self, rule_id: str) -> list[Alert]:
        return [a for a in self.alerts if a.rule_id == rule_id]


def enrol(i: int) -> dict[str, Any]:
    return {
        "event_id": f"en-{i}",
        "ts": HOUR0 + i,
        "account_id": ACCT,
        "operation": "face_list.add_face",
    }


def identify(i: int, account: str = ACCT) -> dict[str, Any]:
    return {
        "event_id": f"id-{i}",
        "ts": HOUR0 + 100 + i,
        "account_id": account,
        "operation": "face.identify",
    }


def vision(i: int) -> dict[str, Any]:
    return {
        "event_id": f"vi-{i}",
        "ts": HOUR0 + 200 + i,
        "account_id": ACCT,
        "operation": "chat.completions",
        "image_count": 1,
        "intent": {"label": "identify_person", "score": 0.95},
    }


def test_versions_of_the_change() -> None:
    changed = parse_rules(CHANGED, "changed.yaml")
    assert changed.by_id("FR-007").version != RULES.by_id("FR-007").version
    assert changed.by_id("FR-005").version == RULES.by_id("FR-005").version
    assert "FR-008" not in {r.id for r in changed.rules}


def test_unchanged_rules_continue_changed_ones_start_afresh_removed_ones_are_dropped() -> None:
    w = Worker()
    for i in range(2):
        w.feed(vision(i))  # FR-005 needs 3
    for i in range(19):
        w.feed(enrol(i))  # FR-007 (catalog) needs 20 enrolments and an identification
    w.feed(identify(0, "acct-unknown-1"))  # FR-008: an unknown account
    assert [a.rule_id for a in w.alerts] == ["FR-008"]
    retired = {k for k in w.table if k.startswith(("FR-007|", "FR-008|"))}
    assert retired
    assert w.in_force.offer(CHANGED, "changed.yaml")
    w.tick()  # the next message's pass: states of versions no longer in force are dropped
    assert not retired & set(w.table)
    assert any(k.startswith("FR-005|") for k in w.table)  # FR-005's window stays
    w.feed(vision(2))
    (fr5,) = w.fired("FR-005")
    assert fr5.count == 3  # the two before the change count: its version did not change
    w.feed(identify(1))
    assert not w.fired("FR-007")  # 19 enrolments before the change do not count for it
    w.feed(enrol(100))
    w.feed(enrol(101))
    (fr7,) = w.fired("FR-007")
    # afresh: what matched it after the change (the vision identification, the identification
    # and two enrolments), none of the 19 enrolments and 2 vision requests before
    assert fr7.count == 4
    assert fr7.rule_version == parse_rules(CHANGED, "x").by_id("FR-007").version
    assert fr7.rules_sha256 == parse_rules(CHANGED, "x").sha256
    w.feed(identify(2, "acct-unknown-2"))
    assert len(w.fired("FR-008")) == 1  # disabled: no more alerts
    assert w.errors == 0


def test_a_version_that_fails_validation_is_refused_and_the_rules_in_force_stay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = Worker()
    for i in range(2):
        w.feed(vision(i))
    with caplog.at_level(logging.ERROR):
        assert not w.in_force.offer(BROKEN, "broken.yaml")
    assert w.in_force.changes == {"applied": 0, "refused": 1}
    assert w.in_force.rules.sha256 == RULES.sha256
    assert "broken.yaml: rule FR-007: field window" in caplog.text
    w.feed(vision(2))
    assert len(w.fired("FR-005")) == 1  # alerts keep flowing under the version in force


def test_the_same_version_again_is_no_change() -> None:
    w = Worker()
    called: list[str] = []
    w.in_force.listen(lambda rules, _data: called.append(rules.sha256))
    assert not w.in_force.offer(CATALOG, "again.yaml")
    assert called == [] and w.in_force.changes == {"applied": 0, "refused": 0}
    assert w.in_force.offer(CHANGED, "changed.yaml")
    assert called == [parse_rules(CHANGED, "x").sha256]
    assert w.in_force.changes == {"applied": 1, "refused": 0}


def test_reload_file_reads_the_file_again(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_bytes(CATALOG)
    in_force = RulesInForce(parse_rules(CATALOG, str(path)), CATALOG)
    assert not in_force.reload_file(str(path))
    path.write_bytes(CHANGED)
    assert in_force.reload_file(str(path))
    assert in_force.rules.sha256 == parse_rules(CHANGED, "x").sha256
    path.unlink()
    assert not in_force.reload_file(str(path))
    assert in_force.changes == {"applied": 1, "refused": 1}


def test_a_message_screened_under_the_rules_before_a_change_is_recognised() -> None:
    changed = parse_rules(CHANGED, "changed.yaml")
    record = orjson.dumps(enrol(0))
    before = Screen(RULES).screen(record, NOW)
    assert before.rules_sha256 == RULES.sha256
    router = Router(RULES, sample_directory(), PARTITIONS)
    router.set_rules(changed)
    # the worker compares these and screens the message again under the rules in force
    assert router.screen.rules_sha256 == changed.sha256 != before.rules_sha256
    again = router.screen.screen(record, NOW)
    assert again.rules_sha256 == changed.sha256
    assert type(before).from_wire(before.to_wire()).rules_sha256 == RULES.sha256


def test_rules_snapshot_is_the_bytes_in_force(tmp_path: Path) -> None:
    changed = parse_rules(CHANGED, "changed.yaml")
    path = rules_snapshot(tmp_path / "rules", changed, CHANGED)
    assert path.read_bytes() == CHANGED
    assert rules_snapshot(tmp_path / "rules", changed, CHANGED) == path


def _record(
    value: bytes | None, offset: int, key: bytes = RULES_KEY
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        "frwatch.rules",
        0,
        offset,
        0,
        0,
        key,
        value,
        None,
        0,
        len(value or b""),
        [],  # type: ignore[arg-type]
    )


def test_the_feed_puts_the_last_valid_deployed_version_in_force_at_catch_up() -> None:
    in_force = RulesInForce(RULES, CATALOG)
    feed = RulesFeed(["127.0.0.1:1"], "frwatch.rules", in_force)
    feed.apply(_record(CHANGED, 0))
    feed.apply(_record(BROKEN, 1))  # ignored at catch-up: the one before stays the latest
    feed.apply(_record(CATALOG, 2, key=b"other"))  # not the rules key
    assert in_force.rules.sha256 == RULES.sha256  # nothing before the end of the catch-up
    feed.applied()
    assert in_force.rules.sha256 == parse_rules(CHANGED, "x").sha256
    feed.ready.set()
    feed.apply(_record(BROKEN, 3))  # followed: refused and counted
    feed.apply(_record(None, 4))  # a tombstone: no rules, ignored
    assert in_force.changes == {"applied": 1, "refused": 1}
    feed.apply(_record(CATALOG, 5))
    assert in_force.rules.sha256 == RULES.sha256


def test_window_keys_carry_the_version_they_were_counted_under() -> None:
    w = Worker()
    w.feed(vision(0))
    rs: RuleSet = w.in_force.rules
    for key in w.table:
        if key[:1] != "~":
            rule_id, version, *_ = split_window_key(key)
            assert version == rs.by_id(rule_id).state_version
