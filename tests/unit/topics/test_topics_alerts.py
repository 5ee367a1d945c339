"""`frwatch.alerts`: the alert document (SPEC 5) and alert_id."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from topics.alerts import ACCOUNT_FIELDS, MAX_SAMPLES, SAMPLE_FIELDS, SCHEMA, Alert, alert_id

HOUR = 3_600_000
START = 1_794_985_200_000  # 2026-11-18T07:00:00.000Z
RULES_SHA = "ab" * 32
RULE_VERSION = "cd" * 32
TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z\Z")


def sample(event_id: str, ts: int, **extra: Any) -> dict[str, Any]:
    s: dict[str, Any] = dict.fromkeys(SAMPLE_FIELDS)
    s.update(event_id=event_id, ts=ts, operation="face.identify", **extra)
    return s


def make_alert(**changes: Any) -> Alert:
    base = Alert(
        alert_id=alert_id("FR-001", "acct-1", START),
        rule_id="FR-001",
        title="Facial recognition by or for US law enforcement",
        clause="Policy 4.2: no facial recognition by or for US police.",
        severity="critical",
        group_by="account_id",
        group_key="acct-1",
        account={
            "account_id": "acct-1",
            "org_id": "org-1",
            "org_name": "Example County Sheriff",
            "sector": "law_enforcement",
            "acting_for": None,
            "country": "US",
        },
        window_start_ms=START,
        window_end_ms=START + HOUR,
        count=3,
        distinct=None,
        samples=(
            sample("e-2", START + 2_000, gallery={"id": "g", "kind": "suspects"}),
            sample("e-1", START + 1_500),
            sample("e-3", START + 59 * 60_000 + 59_999, intent={"label": "x", "score": 0.9}),
        ),
        rule_version=RULE_VERSION,
        rules_sha256=RULES_SHA,
    )
    return dataclasses.replace(base, **changes)


def test_alert_id_is_the_first_32_hex_of_sha256_of_rule_group_start() -> None:
    assert alert_id("FR-001", "acct-1", START) == "72dd24c5d4e39586a24c9e5968f190b2"
    assert (
        alert_id("FR-001", "acct-1", START)
        == hashlib.sha256(b"FR-001|acct-1|1794985200000").hexdigest()[:32]
    )


def test_alert_id_hashes_utf8() -> None:
    assert alert_id("FR-006", "organisation-é", 0) == "c7693f3d38ff598d78a5da7be502457d"


@given(st.text(max_size=20), st.text(max_size=40), st.integers(0, 253_402_300_799_999))
def test_alert_id_shape(rule: str, group: str, start: int) -> None:
    aid = alert_id(rule, group, start)
    assert re.fullmatch(r"[0-9a-f]{32}", aid)
    want = hashlib.sha256(f"{rule}|{group}|{start}".encode()).hexdigest()[:32]
    assert aid == want


def test_alert_id_differs_by_rule_group_and_window() -> None:
    ids = {
        alert_id("FR-001", "acct-1", START),
        alert_id("FR-002", "acct-1", START),
        alert_id("FR-001", "acct-2", START),
        alert_id("FR-001", "acct-1", START + HOUR),
    }
    assert len(ids) == 4


def test_to_dict_has_exactly_the_spec_keys() -> None:
    doc = make_alert().to_dict("live", START + HOUR, "0.1.0")
    assert list(doc) == [
        "schema",
        "alert_id",
        "status",
        "revision",
        "rule_id",
        "title",
        "clause",
        "severity",
        "group_by",
        "group_key",
        "account",
        "window",
        "observed",
        "evidence",
        "related",
        "detected_at",
        "mode",
        "detector",
    ]
    assert set(doc["account"]) == {
        "account_id",
        "org_id",
        "org_name",
        "sector",
        "acting_for",
        "country",
    }
    assert set(doc["window"]) == {"start", "end"}
    assert set(doc["observed"]) == {"count", "distinct", "estimated"}
    assert set(doc["evidence"]) == {"first_ts", "last_ts", "samples"}
    assert set(doc["detector"]) == {"version", "rules_sha256", "rule_version"}
    for s in doc["evidence"]["samples"]:
        assert set(s) == {
            "event_id",
            "ts",
            "operation",
            "api_key_id",
            "model",
            "region",
            "client_ip",
            "gallery",
            "capture",
            "intent",
        }
    assert set(ACCOUNT_FIELDS) == set(doc["account"])
    assert MAX_SAMPLES == 10


def test_to_dict_values() -> None:
    a = make_alert()
    doc = a.to_dict("replay", START + HOUR + 5, "1.2.3")
    assert doc["schema"] == SCHEMA == "frwatch.alert/v2"
    assert doc["alert_id"] == a.alert_id
    assert (doc["rule_id"], doc["severity"], doc["group_by"], doc["group_key"]) == (
        "FR-001",
        "critical",
        "account_id",
        "acct-1",
    )
    assert doc["account"] == a.account
    assert doc["window"] == {"start": "2026-11-18T07:00:00.000Z", "end": "2026-11-18T08:00:00.000Z"}
    assert doc["observed"] == {"count": 3, "distinct": None, "estimated": False}
    assert (doc["status"], doc["revision"], doc["related"]) == ("open", 0, [])
    assert doc["detected_at"] == "2026-11-18T08:00:00.005Z"
    assert doc["mode"] == "replay"
    assert doc["detector"] == {
        "version": "1.2.3",
        "rules_sha256": RULES_SHA,
        "rule_version": RULE_VERSION,
    }


def test_first_and_last_ts_span_the_samples_whatever_their_order() -> None:
    ev = make_alert().to_dict("live", START, "v")["evidence"]
    assert ev["first_ts"] == "2026-11-18T07:00:01.500Z"
    assert ev["last_ts"] == "2026-11-18T07:59:59.999Z"
    assert [s["ts"] for s in ev["samples"]] == [
        "2026-11-18T07:00:02.000Z",
        "2026-11-18T07:00:01.500Z",
        "2026-11-18T07:59:59.999Z",
    ]


def test_single_sample_is_both_first_and_last() -> None:
    a = make_alert(samples=(sample("e-1", START + 7),), count=1)
    ev = a.to_dict("live", START, "v")["evidence"]
    assert ev["first_ts"] == ev["last_ts"] == "2026-11-18T07:00:00.007Z"


def test_samples_keep_their_metadata_and_only_ts_is_formatted() -> None:
    a = make_alert()
    out = a.to_dict("live", START, "v")["evidence"]["samples"]
    for before, after in zip(a.samples, out, strict=True):
        assert {k: v for k, v in after.items() if k != "ts"} == {
            k: v for k, v in before.items() if k != "ts"
        }
    assert [s["ts"] for s in a.samples] == [START + 2_000, START + 1_500, START + 3_599_999]


def test_every_time_has_milliseconds_and_z() -> None:
    doc = make_alert().to_dict("live", START + 1, "v")
    times = [
        doc["window"]["start"],
        doc["window"]["end"],
        doc["evidence"]["first_ts"],
        doc["evidence"]["last_ts"],
        doc["detected_at"],
        *(s["ts"] for s in doc["evidence"]["samples"]),
    ]
    assert all(TIME.match(t) for t in times), times


def test_window_end_is_exclusive_start_plus_size() -> None:
    a = make_alert(window_start_ms=START - 7 * HOUR, window_end_ms=START + 17 * HOUR)
    w = a.to_dict("live", START, "v")["window"]
    assert w == {"start": "2026-11-18T00:00:00.000Z", "end": "2026-11-19T00:00:00.000Z"}


def test_unknown_account_fields_are_null() -> None:
    a = make_alert(account={"account_id": "acct-9"})
    assert a.to_dict("live", START, "v")["account"] == {
        "account_id": "acct-9",
        "org_id": None,
        "org_name": None,
        "sector": None,
        "acting_for": None,
        "country": None,
    }


def test_account_keeps_only_the_spec_fields() -> None:
    a = make_alert(account={**make_alert().account, "approved_uses": ["identification"]})
    assert "approved_uses" not in a.to_dict("live", START, "v")["account"]


def test_distinct_rule_reports_distinct() -> None:
    a = make_alert(rule_id="FR-006", group_by="org_id", group_key="org-1", count=50, distinct=50)
    assert a.to_dict("live", START, "v")["observed"] == {
        "count": 50,
        "distinct": 50,
        "estimated": False,
    }


def test_to_json_is_to_dict_as_json() -> None:
    a = make_alert()
    assert orjson.loads(a.to_json("live", START, "v")) == a.to_dict("live", START, "v")


def test_alert_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        make_alert().count = 4  # type: ignore[misc]
