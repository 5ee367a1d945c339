"""The JSON Schemas in topics/schemas agree with what frwatch reads and writes."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import jsonschema  # the `test` extra
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topics.accounts import SECTORS, AccountRecord, parse_account_record
from topics.alerts import Alert, alert_id
from topics.dlq import REASONS, DeadLetter, Rejection
from topics.requests import (
    RejectedRecord,
    RequestEvent,
    decode_request_message,
    parse_request_record,
)
from topics.timestamps import MAX_TS_MS, format_ms

SCHEMA_FILES = (
    "request-event.schema.json",
    "account-record.schema.json",
    "alert.schema.json",
    "dead-letter.schema.json",
)


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((files("topics") / "schemas" / name).read_text("utf-8"))
    return doc


def validator(name: str) -> Any:
    return jsonschema.Draft202012Validator(load(name))


REQUEST = validator("request-event.schema.json")
ACCOUNT = validator("account-record.schema.json")
ALERT = validator("alert.schema.json")
DLQ = validator("dead-letter.schema.json")

VALID: dict[str, Any] = {
    "event_id": "e-1",
    "ts": "2026-11-18T07:15:30.123Z",
    "account_id": "acct-1",
    "operation": "face.identify",
}


def rec(**changes: Any) -> dict[str, Any]:
    out = dict(VALID)
    for k, v in changes.items():
        if v is ...:
            out.pop(k, None)
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_schema_is_valid_draft_2020_12_and_ships_with_the_package(name: str) -> None:
    doc = load(name)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(doc)


# --- request events ---------------------------------------------------------------------------

VALID_EVENTS = [
    VALID,
    rec(ts=0),
    rec(ts=MAX_TS_MS),
    rec(ts="2026-11-18t07:15:30z"),
    rec(ts="2026-11-18T08:15:30.123456+01:00"),
    rec(ts="2016-12-31T23:59:60Z"),
    rec(event_id="x" * 128),
    rec(event_id="😀" * 128),
    rec(operation="something.new", unknown={"x": [1]}),
    rec(
        api_key_id="k",
        model="m",
        region="r",
        client_ip="203.0.113.7",
        image_count=3,
        faces_detected=0,
        subject_ids=["a", "b"],
        gallery={"id": "g", "kind": "suspects"},
        capture={"device": "body_camera", "setting": "in_the_wild"},
        intent={"label": "identify_person", "score": 0.93},
    ),
    rec(gallery={"kind": "POLICE"}, capture={"device": "drone"}, intent={"label": "x", "score": 1}),
    rec(gallery={}, capture={"setting": None}, intent={"score": 0}),
    rec(api_key_id=None, image_count=None, subject_ids=None, gallery=None, intent=None),
    rec(records=[1, 2, 3]),  # records beside event_id: a single event
]


@pytest.mark.parametrize("event", VALID_EVENTS)
def test_events_frwatch_accepts_validate(event: dict[str, Any]) -> None:
    assert isinstance(parse_request_record(event), RequestEvent)
    REQUEST.validate(event)


REJECTED_EVENTS: list[object] = [
    [],
    "e-1",
    None,
    {},
    rec(event_id=...),
    rec(event_id=None),
    rec(ts=...),
    rec(account_id=None),
    rec(operation=...),
    rec(event_id=""),
    rec(event_id="x" * 129),
    rec(event_id=5),
    rec(account_id=""),
    rec(operation=""),
    rec(ts=True),
    rec(ts=1.5),
    rec(ts=-1),
    rec(ts=MAX_TS_MS + 1),
    rec(ts="2026-11-18T07:15:30"),
    rec(ts="2026-11-18 07:15:30Z"),
    rec(ts="2026-11-18T07:15Z"),
    rec(ts="2026-11-18T07:15:30+0100"),
    rec(ts="2026-13-18T07:15:30Z"),
    rec(ts="2026-11-32T07:15:30Z"),
    rec(ts="2026-11-18T24:15:30Z"),
    rec(ts="2026-11-18T07:15:30+24:00"),
    rec(ts="\u0662\u0660\u0662\u0666-11-18T07:15:30Z"),
    rec(image_count=-1),
    rec(image_count=True),
    rec(image_count=1.5),
    rec(image_count="1"),
    rec(faces_detected=-1),
    rec(subject_ids="s"),
    rec(subject_ids=[1]),
    rec(gallery="suspects"),
    rec(gallery={"kind": 1}),
    rec(gallery={"id": True}),
    rec(capture={"device": ["mobile"]}),
    rec(capture=[]),
    rec(intent={"score": 1.5}),
    rec(intent={"score": -0.01}),
    rec(intent={"score": "0.9"}),
    rec(intent={"score": True}),
    rec(intent={"label": 1}),
    rec(model=1),
    rec(client_ip=False),
]


@pytest.mark.parametrize("event", REJECTED_EVENTS)
def test_events_frwatch_rejects_do_not_validate(event: object) -> None:
    assert isinstance(parse_request_record(event), Rejection)
    assert not REQUEST.is_valid(event)


def test_known_gaps_of_json_schema_are_stated_in_the_schema() -> None:
    # JSON Schema calls 1.0 an integer and cannot relate day to month; frwatch rejects both
    for event in (rec(image_count=1.0), rec(ts=1.0), rec(ts="2026-02-30T00:00:00Z")):
        assert isinstance(parse_request_record(event), Rejection)
        assert REQUEST.is_valid(event)
    description = load("request-event.schema.json")["description"]
    assert "1.0" in description and "2026-02-30" in description


def test_batches_validate() -> None:
    REQUEST.validate({"records": []})
    REQUEST.validate({"records": [VALID, rec(event_id="e-2", account_id="acct-2")]})
    REQUEST.validate({"records": [VALID], "source": "eventhub"})
    assert not REQUEST.is_valid({"records": 5})
    assert not REQUEST.is_valid({"records": {"0": VALID}})
    assert not REQUEST.is_valid({"records": [{"records": [VALID]}]})  # nested batch
    assert not REQUEST.is_valid({"records": [VALID, rec(image_count=-1)]})


_text = st.text(st.characters(codec="utf-8"), max_size=8)
_opt = st.none() | _text
_ts = st.integers(0, MAX_TS_MS) | st.integers(0, MAX_TS_MS).map(format_ms)
_wire_events = st.fixed_dictionaries(
    {
        "event_id": st.text(st.characters(codec="utf-8"), min_size=1, max_size=128),
        "ts": _ts,
        "account_id": _text.filter(bool),
        "operation": _text.filter(bool),
    },
    optional={
        "api_key_id": _opt,
        "model": _opt,
        "region": _opt,
        "client_ip": _opt,
        "image_count": st.none() | st.integers(0, 2**40),
        "faces_detected": st.none() | st.integers(0, 2**40),
        "subject_ids": st.none() | st.lists(_text, max_size=3),
        "gallery": st.none() | st.fixed_dictionaries({}, optional={"id": _opt, "kind": _opt}),
        "capture": st.none()
        | st.fixed_dictionaries({}, optional={"device": _opt, "setting": _opt}),
        "intent": st.none()
        | st.fixed_dictionaries(
            {},
            optional={
                "label": _opt,
                "score": st.none() | st.integers(0, 1) | st.floats(0, 1, allow_subnormal=False),
            },
        ),
        "extra": st.none() | _text | st.integers(),
    },
)


@settings(max_examples=150)
@given(_wire_events)
def test_generated_valid_events_are_accepted_and_validate(event: dict[str, Any]) -> None:
    assert isinstance(parse_request_record(event), RequestEvent)
    REQUEST.validate(event)
    REQUEST.validate({"records": [event, event]})


_field_values: dict[str, list[object]] = {
    "event_id": [..., None, "e", "", "x" * 129, 1, True],
    "ts": [..., None, 0, -1, MAX_TS_MS, MAX_TS_MS + 1, True, 1.5, "2026-11-18T07:15:30Z",
           "2026-11-18T07:15:30", "2026-11-18T07:15:30.9+05:30", "2026-13-18T07:15:30Z"],
    "account_id": [..., None, "a", "", 3],
    "operation": [..., None, "face.verify", "", []],
    "image_count": [..., None, 0, 4, -1, True, "4"],
    "subject_ids": [..., None, [], ["s"], "s", [1]],
    "gallery": [..., None, {}, {"kind": "inmates"}, {"kind": 4}, "g"],
    "intent": [..., None, {"score": 0.5}, {"score": 1.01}, {"label": None, "score": None},
               {"label": False}],
}  # fmt: skip


@settings(max_examples=300)
@given(st.fixed_dictionaries({k: st.sampled_from(v) for k, v in _field_values.items()}))
def test_schema_and_parser_agree(choice: dict[str, object]) -> None:
    event = {k: v for k, v in choice.items() if v is not ...}
    assert isinstance(parse_request_record(event), RequestEvent) == REQUEST.is_valid(event)


# --- account records --------------------------------------------------------------------------

VALID_ACCOUNTS: list[object] = [
    {"account_id": "a"},
    {
        "account_id": "a",
        "org_id": "o",
        "org_name": "Org",
        "sector": "law_enforcement",
        "acting_for": None,
        "country": "US",
        "approved_uses": ["identification"],
        "updated_at": "2026-11-18T07:00:00+01:00",
        "deleted": True,
        "extra": 1,
    },
    *({"account_id": "a", "sector": s, "acting_for": s} for s in SECTORS),
    {"account_id": "a", "approved_uses": None, "deleted": None, "country": None},
]
REJECTED_ACCOUNTS: list[object] = [
    [],
    {},
    {"account_id": None},
    {"account_id": ""},
    {"account_id": 1},
    {"account_id": "a", "sector": "police"},
    {"account_id": "a", "acting_for": "Law_Enforcement"},
    {"account_id": "a", "country": "us"},
    {"account_id": "a", "country": "USA"},
    {"account_id": "a", "approved_uses": "identification"},
    {"account_id": "a", "approved_uses": [1]},
    {"account_id": "a", "updated_at": 0},
    {"account_id": "a", "updated_at": "2026-11-18T07:00:00"},
    {"account_id": "a", "deleted": "true"},
    {"account_id": "a", "deleted": 1},
    {"account_id": "a", "org_id": 1},
]


@pytest.mark.parametrize("record", VALID_ACCOUNTS)
def test_accounts_frwatch_accepts_validate(record: object) -> None:
    assert isinstance(parse_account_record(record), AccountRecord)
    ACCOUNT.validate(record)


@pytest.mark.parametrize("record", REJECTED_ACCOUNTS)
def test_accounts_frwatch_rejects_do_not_validate(record: object) -> None:
    assert isinstance(parse_account_record(record), Rejection)
    assert not ACCOUNT.is_valid(record)


def test_tombstone_validates() -> None:
    ACCOUNT.validate(None)


# --- alerts -----------------------------------------------------------------------------------

START = 1_794_985_200_000
SAMPLE_NULLS = dict.fromkeys(
    ("api_key_id", "model", "region", "client_ip", "gallery", "capture", "intent")
)


def make_alert(**changes: Any) -> Alert:
    fields: dict[str, Any] = {
        "alert_id": alert_id("FR-002", "acct-1", START),
        "rule_id": "FR-002",
        "title": "Law-enforcement facial recognition on mobile or in-the-wild cameras",
        "clause": "No real-time facial recognition by law enforcement in the wild.",
        "severity": "critical",
        "group_by": "account_id",
        "group_key": "acct-1",
        "account": {
            "account_id": "acct-1",
            "org_id": "org-1",
            "org_name": "Example PD",
            "sector": "law_enforcement",
            "acting_for": None,
            "country": "US",
        },
        "window_start_ms": START,
        "window_end_ms": START + 3_600_000,
        "count": 1,
        "distinct": None,
        "samples": (
            {
                "event_id": "e-1",
                "ts": START + 1,
                "operation": "face.identify",
                "api_key_id": "k-1",
                "model": None,
                "region": "eastus",
                "client_ip": "203.0.113.7",
                "gallery": {"id": "g-1", "kind": "watchlist"},
                "capture": {"device": "mobile", "setting": None},
                "intent": {"label": None, "score": None},
            },
        ),
    }
    fields.update(changes)
    fields.setdefault("rule_version", "cd" * 32)
    fields.setdefault("rules_sha256", "0f" * 32)
    return Alert(**fields)


def alert_doc(a: Alert | None = None, mode: str = "live") -> dict[str, Any]:
    a = a or make_alert()
    doc: dict[str, Any] = orjson.loads(a.to_json(mode, START + 5_000, "0.1.0"))
    return doc


@pytest.mark.parametrize("mode", ["live", "replay"])
def test_alert_validates(mode: str) -> None:
    ALERT.validate(alert_doc(mode=mode))


def test_alert_of_an_unknown_account_validates() -> None:
    ALERT.validate(
        alert_doc(make_alert(rule_id="FR-008", severity="low", account={"account_id": "x"}))
    )


def test_distinct_alert_with_ten_samples_validates() -> None:
    samples = tuple(
        {"event_id": f"e-{i}", "ts": START + i * 1000, "operation": "face.identify", **SAMPLE_NULLS}
        for i in range(10)
    )
    a = make_alert(
        rule_id="FR-006",
        severity="high",
        group_by="org_id",
        group_key="org-1",
        count=57,
        distinct=50,
        samples=samples,
        window_end_ms=START + 86_400_000,
    )
    ALERT.validate(alert_doc(a))


def _mutated(path: tuple[str | int, ...], value: object) -> dict[str, Any]:
    doc = alert_doc()
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("schema",), "frwatch.alert/v1"),
        (("status",), "resolved"),
        (("revision",), -1),
        (("related",), ["nope"]),
        (("observed", "estimated"), ...),
        (("alert_id",), "72DD24C5D4E39586A24C9E5968F190B2"),
        (("alert_id",), "72dd24c5"),
        (("severity",), "info"),
        (("severity",), "Critical"),
        (("mode",), "test"),
        (("group_by",), "api_key_id"),
        (("window", "start"), "2026-11-18T07:00:00Z"),
        (("window", "end"), "2026-11-18T08:00:00.000+00:00"),
        (("detected_at",), START),
        (("evidence", "first_ts"), None),
        (("evidence", "samples"), []),
        (("evidence", "samples", 0, "subject_ids"), ["s-1"]),
        (("evidence", "samples", 0, "prompt"), "who is this?"),
        (("evidence", "samples", 0, "ts"), START),
        (("observed", "count"), 0),
        (("detector", "rules_sha256"), "abc"),
        (("detector", "rule_version"), "FR-001"),
        (("detector", "rule_version"), ...),
        (("account", "approved_uses"), []),
        (("rule_id",), ...),
        (("account", "country"), ...),
        (("evidence", "samples", 0, "intent"), ...),
        (("extra",), 1),
    ],
)
def test_alert_that_breaks_spec_5_does_not_validate(
    path: tuple[str | int, ...], value: object
) -> None:
    assert not ALERT.is_valid(_mutated(path, value))


# --- DLQ --------------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", REASONS)
def test_dead_letter_of_every_reason_validates(reason: str) -> None:
    dl = DeadLetter(Rejection(reason, None, "detail"), "raw", "api.requests", 0, 12)
    DLQ.validate(orjson.loads(dl.to_json()))


def test_dead_letter_without_position_validates() -> None:
    DLQ.validate(orjson.loads(DeadLetter(Rejection("internal_error", None, "x"), "").to_json()))


def test_dead_letters_of_decoded_messages_validate() -> None:
    messages = [
        b"{",
        b"\xff",
        b"[]",
        orjson.dumps(rec(intent={"score": 1.5})),
        orjson.dumps({"records": 5}),
        orjson.dumps({"records": [VALID, {"records": []}, rec(gallery={"kind": 1}), 7]}),
    ]
    n = 0
    for offset, m in enumerate(messages):
        for r in decode_request_message(m):
            if isinstance(r, RejectedRecord):
                doc = orjson.loads(
                    DeadLetter(r.rejection, r.raw, "api.requests", 3, offset).to_json()
                )
                DLQ.validate(doc)
                n += 1
    assert n == 8


def test_dead_letter_with_an_unknown_reason_does_not_validate() -> None:
    doc = orjson.loads(DeadLetter(Rejection("bad_vibes", None, "x"), "r").to_json())
    assert not DLQ.is_valid(doc)
    assert set(load("dead-letter.schema.json")["properties"]["reason"]["enum"]) == set(REASONS)
