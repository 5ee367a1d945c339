"""Every built-in rule against its clause: positive and negative cases kept as data (clauses.yaml)."""

from __future__ import annotations

import copy
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.core.classify import EnrichedEvent
from streams.core.engine import Detector
from streams.core.rules import load_rules
from streams.core.state import MemoryWindowStore
from topics.accounts import AccountDirectory, AccountRecord, AccountTombstone, parse_account_record
from topics.requests import RequestEvent, parse_request_record
from topics.timestamps import parse_rfc3339_ms

FIXTURES = Path(__file__).parent / "fixtures" / "clauses.yaml"
DOC: dict[str, Any] = yaml.safe_load(FIXTURES.read_text(encoding="utf-8"))
LIBRARY: dict[str, dict[str, Any]] = DOC["accounts"]
CASES: list[dict[str, Any]] = DOC["cases"]
CASE_KEYS = {"name", "about", "accounts", "events", "expect", "negative"}

Fired = tuple[str, str, int]


def _substitute(value: Any, i: int) -> Any:
    if isinstance(value, str):
        return value.format(i=i)
    if isinstance(value, list):
        return [_substitute(v, i) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, i) for k, v in value.items()}
    return value


def _account_update(item: Any) -> AccountRecord | AccountTombstone:
    if isinstance(item, str):
        item = LIBRARY[item]
    if set(item) == {"tombstone"}:
        return AccountTombstone(item["tombstone"])
    rec = parse_account_record(copy.deepcopy(item))
    assert isinstance(rec, AccountRecord), f"fixture account record is invalid: {item}: {rec}"
    return rec


def expand_steps(case: dict[str, Any]) -> list[AccountRecord | AccountTombstone | RequestEvent]:
    """The case's account updates and events, in processing order."""
    steps: list[AccountRecord | AccountTombstone | RequestEvent] = [
        _account_update(a) for a in case.get("accounts", [])
    ]
    for item in case["events"]:
        if "range" in item:
            start, stop = item["range"]
            raws = [_substitute(item["event"], i) for i in range(start, stop)]
        elif "account" in item:
            steps.append(_account_update(item["account"]))
            continue
        elif "tombstone" in item:
            steps.append(AccountTombstone(item["tombstone"]))
            continue
        else:
            raws = [item]
        for raw in raws:
            ev = parse_request_record(copy.deepcopy(raw))
            assert isinstance(ev, RequestEvent), f"fixture event is malformed: {raw}: {ev}"
            steps.append(ev)
    return steps


def run_case(case: dict[str, Any]) -> set[Fired]:
    """Run a case through the real detector; the (rule_id, group_key, window_start_ms) that fired."""
    detector = Detector(load_rules(), MemoryWindowStore())
    directory = AccountDirectory()
    fired: list[Fired] = []
    for step in expand_steps(case):
        if isinstance(step, RequestEvent):
            obs = detector.observe(
                EnrichedEvent(
                    step, directory.get(step.account_id), detector.rule_set.classification
                )
            )
            fired.extend((a.rule_id, a.group_key, a.window_start_ms) for a in obs.alerts)
            detector.expire()
        else:
            directory.apply(step)
    assert len(fired) == len(set(fired)), f"a window fired twice: {fired}"
    return set(fired)


def _window_ms(v: str | int) -> int:
    return v if isinstance(v, int) else parse_rfc3339_ms(v)


def expected(case: dict[str, Any]) -> set[Fired]:
    """The case's expected alerts."""
    return {(rule, key, _window_ms(start)) for rule, key, start in case["expect"]}


def coverage() -> dict[str, dict[str, int]]:
    """rule id -> number of positive and negative cases."""
    cov: dict[str, dict[str, int]] = defaultdict(lambda: {"+": 0, "-": 0})
    for case in CASES:
        for rule in {r for r, _, _ in case["expect"]}:
            cov[rule]["+"] += 1
        for rule in case.get("negative", []):
            cov[rule]["-"] += 1
    return cov


def test_fixture_file_is_well_formed() -> None:
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    rule_ids = {r.id for r in load_rules().rules}
    for case in CASES:
        assert set(case) <= CASE_KEYS, f"{case['name']}: unknown keys {set(case) - CASE_KEYS}"
        assert case["events"], f"{case['name']}: no events"
        for rule, _, _ in case["expect"]:
            assert rule in rule_ids, f"{case['name']}: unknown rule {rule}"
        for rule in case.get("negative", []):
            assert rule in rule_ids, f"{case['name']}: unknown rule {rule}"
            assert rule not in {r for r, _, _ in case["expect"]}, (
                f"{case['name']}: {rule} both expected and negative"
            )


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_clause_case(case: dict[str, Any]) -> None:
    fired = run_case(case)
    assert fired == expected(case), case.get("about", "")
    assert not {r for r, _, _ in fired} & set(case.get("negative", []))


def test_clause_coverage(capsys: pytest.CaptureFixture[str]) -> None:
    """Every built-in rule has at least one positive and one negative case."""
    cov = coverage()
    rule_ids = sorted(r.id for r in load_rules().rules)
    line = "clause coverage: " + ", ".join(f"{r} +{cov[r]['+']}/-{cov[r]['-']}" for r in rule_ids)
    with capsys.disabled():
        print(f"\n{line}")
    missing = [r for r in rule_ids if cov[r]["+"] == 0 or cov[r]["-"] == 0]
    assert not missing, f"rules without a positive and a negative case: {missing}"
