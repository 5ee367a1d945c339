"""`api.requests` decoding and validation: every rule of SPEC 2 and 2.3."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from topics.dlq import (
    MISSING_FIELD,
    NOT_JSON,
    NOT_OBJECT,
    OUT_OF_RANGE,
    RAW_LIMIT_BYTES,
    REASONS,
    WRONG_TYPE,
    DeadLetter,
    Rejection,
    raw_text,
)
from topics.requests import (
    Capture,
    Gallery,
    Intent,
    RejectedRecord,
    RequestEvent,
    decode_request_message,
    is_batch,
    parse_event_time,
    parse_request_record,
)
from topics.timestamps import MAX_TS_MS

TS = "2026-11-18T07:15:30.123Z"
TS_MS = 1_794_986_130_123
VALID: dict[str, Any] = {
    "event_id": "e-1",
    "ts": TS,
    "account_id": "acct-1",
    "operation": "face.identify",
}


def rec(**changes: Any) -> dict[str, Any]:
    """VALID with fields changed; a value of ... removes the field."""
    out = dict(VALID)
    for k, v in changes.items():
        if v is ...:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def accepted(record: object) -> RequestEvent:
    r = parse_request_record(record)
    assert isinstance(r, RequestEvent), r
    return r


def rejected(record: object) -> Rejection:
    r = parse_request_record(record)
    assert isinstance(r, Rejection), r
    return r


def one(data: bytes | str) -> RequestEvent | RejectedRecord:
    out = decode_request_message(data)
    assert len(out) == 1
    return out[0]


# --- valid events ---------------------------------------------------------------------------


def test_minimal_event_takes_every_default() -> None:
    assert accepted(VALID) == RequestEvent("e-1", TS_MS, "acct-1", "face.identify")
    e = accepted(VALID)
    assert e.image_count == 0
    assert e.faces_detected is None
    assert e.subject_ids == ()
    assert (e.api_key_id, e.model, e.region, e.client_ip) == (None, None, None, None)
    assert (e.gallery, e.capture, e.intent) == (None, None, None)


def test_full_event_keeps_every_field() -> None:
    e = accepted(
        rec(
            api_key_id="k-1",
            model="gpt-vision",
            region="eastus",
            client_ip="203.0.113.7",
            image_count=2,
            faces_detected=0,
            subject_ids=["s1", "s2"],
            gallery={"id": "g-1", "kind": "suspects"},
            capture={"device": "body_camera", "setting": "in_the_wild"},
            intent={"label": "identify_person", "score": 0.93},
        )
    )
    assert e == RequestEvent(
        "e-1",
        TS_MS,
        "acct-1",
        "face.identify",
        "k-1",
        "gpt-vision",
        "eastus",
        "203.0.113.7",
        2,
        0,
        ("s1", "s2"),
        Gallery("g-1", "suspects"),
        Capture("body_camera", "in_the_wild"),
        Intent("identify_person", 0.93),
    )


def test_unknown_extra_fields_are_ignored() -> None:
    e = accepted(rec(prompt="secret", extra={"nested": [1, 2]}, records=5, ts_ms="nonsense"))
    assert e == accepted(VALID)


@pytest.mark.parametrize(
    ("field", "attr", "default"),
    [
        ("api_key_id", "api_key_id", None),
        ("model", "model", None),
        ("region", "region", None),
        ("client_ip", "client_ip", None),
        ("image_count", "image_count", 0),
        ("faces_detected", "faces_detected", None),
        ("subject_ids", "subject_ids", ()),
        ("gallery", "gallery", None),
        ("capture", "capture", None),
        ("intent", "intent", None),
    ],
)
def test_null_optional_field_takes_its_default(field: str, attr: str, default: object) -> None:
    assert getattr(accepted(rec(**{field: None})), attr) == default
    assert getattr(accepted(rec(**{field: ...})), attr) == default


def test_fields_inside_objects_are_optional_and_null_means_absent() -> None:
    e = accepted(rec(gallery={}, capture={"device": None}, intent={"label": "describe_scene"}))
    assert e.gallery == Gallery(None, None)
    assert e.capture == Capture(None, None)
    assert e.intent == Intent("describe_scene", None)
    e = accepted(rec(intent={"score": 0.5, "other": "x"}, gallery={"id": "g", "size": 3}))
    assert e.intent == Intent(None, 0.5)
    assert e.gallery == Gallery("g", None)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("gallery", {"kind": "SUSPECTS"}),
        ("gallery", {"kind": "police_lineup"}),
        ("capture", {"device": "drone", "setting": "Controlled"}),
        ("intent", {"label": "identify_celebrity", "score": 1}),
    ],
)
def test_unlisted_enumerated_values_are_valid_and_kept_exactly(
    field: str, value: dict[str, Any]
) -> None:
    wire = accepted(rec(**{field: value})).to_wire()[field]
    for k, v in value.items():
        assert wire[k] == v


def test_unknown_operation_is_valid() -> None:
    assert accepted(rec(operation="Face.Identify")).operation == "Face.Identify"


@pytest.mark.parametrize("score", [0, 1, 0.0, 1.0, 0.8, 1e-9, -0.0])
def test_intent_score_accepts_any_number_in_0_to_1(score: float) -> None:
    assert accepted(rec(intent={"label": "x", "score": score})).intent == Intent("x", score)


def test_event_id_length_is_counted_in_characters() -> None:
    assert accepted(rec(event_id="x" * 128)).event_id == "x" * 128
    assert accepted(rec(event_id="é" * 128)).event_id == "é" * 128  # 256 bytes in UTF-8
    assert accepted(rec(event_id="😀" * 128)).event_id == "😀" * 128


def test_counts_accept_zero_and_large_integers() -> None:
    e = accepted(rec(image_count=0, faces_detected=0))
    assert (e.image_count, e.faces_detected) == (0, 0)
    e = accepted(rec(image_count=2**40, faces_detected=2**63 - 1))
    assert (e.image_count, e.faces_detected) == (2**40, 2**63 - 1)


def test_empty_subject_ids_and_empty_strings_in_optional_fields_are_valid() -> None:
    e = accepted(rec(subject_ids=[], api_key_id="", gallery={"id": "", "kind": ""}))
    assert e.subject_ids == ()
    assert e.api_key_id == ""
    assert e.gallery == Gallery("", "")


# --- ts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "ms"),
    [
        (0, 0),
        (MAX_TS_MS, MAX_TS_MS),
        (TS_MS, TS_MS),
        ("1970-01-01T00:00:00Z", 0),
        ("9999-12-31T23:59:59.999Z", MAX_TS_MS),
        (TS, TS_MS),
        ("2026-11-18t07:15:30.123z", TS_MS),
        ("2026-11-18T07:15:30.123z", TS_MS),
        ("2026-11-18t07:15:30.123Z", TS_MS),
        ("2026-11-18T08:15:30.123+01:00", TS_MS),
        ("2026-11-18T01:45:30.123-05:30", TS_MS),
        ("2026-11-18T07:15:30.123+00:00", TS_MS),
        ("2026-11-18T07:15:30.123-00:00", TS_MS),
        ("2026-11-19T06:15:30.123+23:00", TS_MS),
        ("2026-11-18T07:15:30.1239Z", TS_MS),
        ("2026-11-18T07:15:30.123999999Z", TS_MS),
        ("2026-11-18T07:15:30Z", TS_MS - 123),
        ("2026-11-18T07:15:30.1Z", TS_MS - 23),
        ("2026-11-18T07:15:30.12Z", TS_MS - 3),
        ("2026-11-18T07:15:30.000001Z", TS_MS - 123),
        ("2026-11-18T07:15:30.9999Z", TS_MS - 123 + 999),
        ("2024-02-29T00:00:00Z", 1_709_164_800_000),
        ("2016-12-31T23:59:60Z", 1_483_228_800_000),  # leap second: folded into the next
    ],
)
def test_valid_ts(ts: str | int, ms: int) -> None:
    assert accepted(rec(ts=ts)).ts_ms == ms


def test_fraction_is_truncated_never_rounded() -> None:
    assert accepted(rec(ts="2026-11-18T07:15:30.9999Z")).ts_ms % 1000 == 999
    assert (
        accepted(rec(ts="2026-12-31T23:59:59.9999999Z")).ts_ms
        == accepted(rec(ts="2026-12-31T23:59:59.999Z")).ts_ms
    )
    assert accepted(rec(ts="2026-11-18T07:15:30.0005Z")).ts_ms % 1000 == 0


@pytest.mark.parametrize(
    "ts",
    [
        "2026-11-18T07:15:30",  # no offset
        "2026-11-18T07:15:30.123",  # no offset
        "2026-11-18 07:15:30Z",  # space separator
        "2026-11-18",
        "07:15:30Z",
        "2026-11-18T07:15Z",  # no seconds
        "2026-11-18T07:15:30+0100",
        "2026-11-18T07:15:30+01",
        "2026-11-18T07:15:30.Z",  # empty fraction
        "2026-11-18T07:15:30,123Z",
        "2026-11-18T07:15:30ZZ",
        "2026-11-18T07:15:30UTC",
        " 2026-11-18T07:15:30Z",
        "2026-11-18T07:15:30Z ",
        "2026-11-18T07:15:30Z\n",
        "26-11-18T07:15:30Z",
        "+2026-11-18T07:15:30Z",
        "2026-1-18T07:15:30Z",
        "\u0662\u0660\u0662\u0666-11-18T07:15:30Z",  # Arabic-Indic digits
        "\uff12\uff10\uff12\uff16-11-18T07:15:30Z",  # full-width digits
        "",
        "1794986130123",
    ],
)
def test_ts_string_in_the_wrong_form_is_wrong_type(ts: str) -> None:
    r = rejected(rec(ts=ts))
    assert (r.reason, r.field) == (WRONG_TYPE, "ts")


@pytest.mark.parametrize(
    "ts",
    [
        "2026-13-01T00:00:00Z",
        "2026-00-01T00:00:00Z",
        "2026-11-00T00:00:00Z",
        "2026-11-31T00:00:00Z",
        "2026-02-29T00:00:00Z",  # 2026 is not a leap year
        "1900-02-29T00:00:00Z",  # divisible by 100, not by 400
        "2026-01-32T00:00:00Z",
        "2026-11-18T24:00:00Z",
        "2026-11-18T07:60:00Z",
        "2026-11-18T07:15:61Z",
        "2026-11-18T07:15:30+24:00",
        "2026-11-18T07:15:30-01:60",
    ],
)
def test_ts_string_naming_an_impossible_time_is_out_of_range(ts: str) -> None:
    r = rejected(rec(ts=ts))
    assert (r.reason, r.field) == (OUT_OF_RANGE, "ts")


@pytest.mark.parametrize("ts", [-1, MAX_TS_MS + 1, 2**63, -(2**63)])
def test_integer_ts_outside_0_to_year_9999_is_out_of_range(ts: int) -> None:
    r = rejected(rec(ts=ts))
    assert (r.reason, r.field) == (OUT_OF_RANGE, "ts")


@pytest.mark.parametrize("ts", [True, False, 1.0, 1794986130123.0, 1.5, [], {}, [TS]])
def test_ts_of_another_json_type_is_wrong_type(ts: object) -> None:
    r = rejected(rec(ts=ts))
    assert (r.reason, r.field) == (WRONG_TYPE, "ts")


def test_ts_strings_share_the_integer_bounds() -> None:
    # outside 1970..9999 UTC a window or alert time could not be written as RFC 3339
    for ts in ("1969-12-31T23:59:59.999Z", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999-01:00"):
        r = rejected(rec(ts=ts))
        assert (r.reason, r.field) == ("out_of_range", "ts")
    assert accepted(rec(ts="1970-01-01T00:00:00Z")).ts_ms == 0
    assert accepted(rec(ts="9999-12-31T23:59:59.999Z")).ts_ms == MAX_TS_MS
    assert accepted(rec(ts="1970-01-01T01:00:00+01:00")).ts_ms == 0


def test_parse_event_time_names_the_field() -> None:
    assert parse_event_time(5) == 5
    assert parse_event_time("1970-01-01T00:00:00.005Z", "updated_at") == 5


# --- missing_field ----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["event_id", "ts", "account_id", "operation"])
@pytest.mark.parametrize("how", ["absent", "null"])
def test_required_field_absent_or_null_is_missing_field(field: str, how: str) -> None:
    r = rejected(rec(**{field: ... if how == "absent" else None}))
    assert (r.reason, r.field) == (MISSING_FIELD, field)
    assert field in r.detail


def test_empty_object_is_missing_field() -> None:
    assert rejected({}).reason == MISSING_FIELD


# --- wrong_type -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", 1),
        ("event_id", True),
        ("event_id", ["e-1"]),
        ("account_id", 7),
        ("account_id", {"id": "a"}),
        ("operation", False),
        ("operation", 1.5),
        ("api_key_id", 1),
        ("model", True),
        ("region", ["eastus"]),
        ("client_ip", {"v4": "203.0.113.7"}),
        ("image_count", True),
        ("image_count", False),
        ("image_count", 1.0),
        ("image_count", 1.5),
        ("image_count", "1"),
        ("faces_detected", True),
        ("faces_detected", 0.0),
        ("faces_detected", "0"),
        ("subject_ids", "s1"),
        ("subject_ids", {"0": "s1"}),
        ("subject_ids", ["s1", 2]),
        ("subject_ids", ["s1", None]),
        ("subject_ids", [["s1"]]),
        ("gallery", "suspects"),
        ("gallery", ["g", "suspects"]),
        ("gallery", True),
        ("capture", "mobile"),
        ("intent", 0.9),
    ],
)
def test_field_of_the_wrong_type_is_wrong_type(field: str, value: object) -> None:
    r = rejected(rec(**{field: value}))
    assert (r.reason, r.field) == (WRONG_TYPE, field)
    assert field in r.detail


@pytest.mark.parametrize(
    ("obj", "inner", "value", "name"),
    [
        ("gallery", "id", 1, "gallery.id"),
        ("gallery", "kind", 1, "gallery.kind"),
        ("gallery", "kind", ["suspects"], "gallery.kind"),
        ("capture", "device", True, "capture.device"),
        ("capture", "setting", [], "capture.setting"),
        ("intent", "label", 0, "intent.label"),
        ("intent", "score", "0.9", "intent.score"),
        ("intent", "score", True, "intent.score"),
        ("intent", "score", False, "intent.score"),
        ("intent", "score", [0.9], "intent.score"),
    ],
)
def test_inner_field_of_the_wrong_type_is_named_with_a_dot(
    obj: str, inner: str, value: object, name: str
) -> None:
    r = rejected(rec(**{obj: {inner: value}}))
    assert (r.reason, r.field) == (WRONG_TYPE, name)


# --- out_of_range -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"event_id": ""}, "event_id"),
        ({"event_id": "x" * 129}, "event_id"),
        ({"event_id": "😀" * 129}, "event_id"),
        ({"account_id": ""}, "account_id"),
        ({"operation": ""}, "operation"),
        ({"image_count": -1}, "image_count"),
        ({"faces_detected": -1}, "faces_detected"),
        ({"intent": {"label": "identify_person", "score": 1.5}}, "intent.score"),
        ({"intent": {"score": -0.1}}, "intent.score"),
        ({"intent": {"score": 2}}, "intent.score"),
        ({"intent": {"score": 1.0000001}}, "intent.score"),
    ],
)
def test_value_outside_its_range_is_out_of_range(changes: dict[str, Any], field: str) -> None:
    r = rejected(rec(**changes))
    assert (r.reason, r.field) == (OUT_OF_RANGE, field)


# --- not_object / not_json --------------------------------------------------------------------


@pytest.mark.parametrize("value", [[], [VALID], 1, 1.5, "e-1", True, None])
def test_record_that_is_not_an_object_is_not_object(value: object) -> None:
    r = rejected(value)
    assert (r.reason, r.field) == (NOT_OBJECT, None)


@pytest.mark.parametrize("data", [b"[]", b"[{}]", b"1", b'"text"', b"null", b"true", b"  42 \n"])
def test_message_that_is_json_but_not_an_object_is_not_object(data: bytes) -> None:
    r = one(data)
    assert isinstance(r, RejectedRecord)
    assert (r.rejection.reason, r.rejection.field) == (NOT_OBJECT, None)
    assert r.raw == data.decode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   ",
        b"{",
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b'{"event_id": "e-1", "ts": NaN, "account_id": "a", "operation": "o"}',
        b'{"event_id": "e-1", "ts": 0, "account_id": "a", "operation": "o", "x": Infinity}',
        b'{"event_id": "e-1", "ts": 0, "account_id": "a", "operation": "o", "x": -Infinity}',
        b'{"event_id": "e-1", "ts": 0, "account_id": "a", "operation": "o", "x": 1e400}',
        b"{'event_id': 'e-1'}",
        b'{"event_id": "e-1",}',
        b'{"event_id": "e-1"} {"event_id": "e-2"}',
        b'{"event_id": "e-1"}\x00',
        b'{"event_id": "\\ud800", "ts": 0, "account_id": "a", "operation": "o"}',
    ],
)
def test_message_that_is_not_strict_json_is_not_json(data: bytes) -> None:
    r = one(data)
    assert isinstance(r, RejectedRecord)
    assert (r.rejection.reason, r.rejection.field) == (NOT_JSON, None)
    assert r.raw == data.decode()


def test_invalid_utf8_is_not_json_and_raw_keeps_the_text_with_replacements() -> None:
    data = b'{"event_id": "e-\xff", "ts": 0, "account_id": "a", "operation": "o"}'
    r = one(data)
    assert isinstance(r, RejectedRecord)
    assert r.rejection.reason == NOT_JSON
    assert r.raw == '{"event_id": "e-\ufffd", "ts": 0, "account_id": "a", "operation": "o"}'


def test_str_with_a_lone_surrogate_is_not_json_and_its_dead_letter_serializes() -> None:
    r = one('{"event_id": "e-\ud800", "ts": 0, "account_id": "a", "operation": "o"}')
    assert isinstance(r, RejectedRecord)
    assert r.rejection.reason == NOT_JSON
    assert "\ud800" not in r.raw
    assert orjson.loads(DeadLetter(r.rejection, r.raw).to_json())["raw"].startswith('{"event_id"')


# --- whole messages and batches ---------------------------------------------------------------


def test_single_event_message_bytes_and_str_give_the_same_result() -> None:
    data = orjson.dumps(VALID)
    assert (
        decode_request_message(data) == decode_request_message(data.decode()) == [accepted(VALID)]
    )


def test_rejected_single_event_keeps_the_original_message_as_raw() -> None:
    data = b'{ "event_id" : "e-1",  "ts": "yesterday", "account_id": "a", "operation": "o" }'
    r = one(data)
    assert isinstance(r, RejectedRecord)
    assert r.rejection.field == "ts"
    assert r.raw == data.decode()


def test_is_batch() -> None:
    assert is_batch({"records": []})
    assert is_batch({"records": 5})
    assert not is_batch({"records": [], "event_id": "e-1"})
    assert not is_batch(VALID)


def test_empty_batch_holds_no_record() -> None:
    assert decode_request_message(b'{"records": []}') == []
    assert decode_request_message(b'{"records": [], "source": "eventhub"}') == []


@pytest.mark.parametrize("records", [5, "x", {}, {"0": VALID}, None, True])
def test_records_that_is_not_an_array_makes_one_malformed_record(records: object) -> None:
    data = orjson.dumps({"records": records})
    r = one(data)
    assert isinstance(r, RejectedRecord)
    assert r.rejection.reason in REASONS
    assert (r.rejection.reason, r.rejection.field) == (WRONG_TYPE, "records")
    assert r.raw == data.decode()


def test_object_with_records_and_event_id_is_a_single_event() -> None:
    data = orjson.dumps({**VALID, "records": [rec(event_id="e-2")]})
    assert decode_request_message(data) == [accepted(VALID)]


def test_nested_batch_record_is_malformed_missing_event_id() -> None:
    data = orjson.dumps({"records": [{"records": [VALID]}]})
    r = one(data)
    assert isinstance(r, RejectedRecord)
    assert (r.rejection.reason, r.rejection.field) == (MISSING_FIELD, "event_id")
    assert orjson.loads(r.raw) == {"records": [VALID]}


def test_mixed_batch_validates_each_record_on_its_own_in_order() -> None:
    records: list[object] = [
        rec(event_id="e-1", account_id="acct-1"),
        rec(event_id="e-2", image_count=-1),
        "not an object",
        rec(event_id="e-3", account_id="acct-2", ts=TS_MS),
        rec(event_id=..., extra="x"),
        rec(event_id="e-4", intent={"score": 1.5}),
        rec(event_id="e-5", account_id="acct-3", operation="chat.completions"),
    ]
    out = decode_request_message(orjson.dumps({"records": records}))
    assert len(out) == len(records)
    kinds = [
        (o.rejection.reason, o.rejection.field) if isinstance(o, RejectedRecord) else o.event_id
        for o in out
    ]
    assert kinds == [
        "e-1",
        (OUT_OF_RANGE, "image_count"),
        (NOT_OBJECT, None),
        "e-3",
        (MISSING_FIELD, "event_id"),
        (OUT_OF_RANGE, "intent.score"),
        "e-5",
    ]
    assert {o.account_id for o in out if isinstance(o, RequestEvent)} == {
        "acct-1",
        "acct-2",
        "acct-3",
    }
    # each rejected record's raw is that record alone, not the whole message
    for o, r in zip(out, records, strict=True):
        if isinstance(o, RejectedRecord):
            assert orjson.loads(o.raw) == r


def test_batch_gives_the_same_result_as_one_message_per_record() -> None:
    records: list[object] = [
        VALID,
        rec(event_id="e-2", ts="2026-11-18T07:15:30"),
        rec(event_id="e-3", gallery={"kind": "inmates"}),
        [1, 2],
        None,
    ]
    batched = decode_request_message(orjson.dumps({"records": records}))
    single = [one(orjson.dumps(r)) for r in records]
    assert batched == single


def test_deeply_nested_batch_record_does_not_crash() -> None:
    # orjson reads 1024 levels of nesting but writes only 254
    deep = b"[" * 400 + b"]" * 400
    data = b'{"records": [' + deep + b', {"event_id": "e-1", "x": ' + deep + b"}]}"
    out = decode_request_message(data)
    assert [type(o) for o in out] == [RejectedRecord, RejectedRecord]
    assert isinstance(out[0], RejectedRecord)
    assert out[0].rejection.reason == NOT_OBJECT
    # orjson cannot write it back: the standard library writes that record alone
    assert out[0].raw == (b"[" * 400 + b"]" * 400).decode()
    for o in out:
        assert isinstance(o, RejectedRecord)
        assert orjson.loads(DeadLetter(o.rejection, o.raw).to_json())["raw"] == o.raw


def test_message_nested_beyond_the_json_depth_limit_is_not_json() -> None:
    r = one(b"[" * 2000 + b"]" * 2000)
    assert isinstance(r, RejectedRecord)
    assert r.rejection.reason == NOT_JSON


# --- to_wire ----------------------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8"), max_size=12)
_opt_text = st.none() | _text
_events = st.builds(
    RequestEvent,
    event_id=st.text(st.characters(codec="utf-8"), min_size=1, max_size=128),
    ts_ms=st.integers(0, MAX_TS_MS),
    account_id=_text.filter(bool),
    operation=st.sampled_from(["face.identify", "face.verify", "chat.completions"])
    | _text.filter(bool),
    api_key_id=_opt_text,
    model=_opt_text,
    region=_opt_text,
    client_ip=_opt_text,
    image_count=st.integers(0, 2**40),
    faces_detected=st.none() | st.integers(0, 2**40),
    subject_ids=st.lists(_text, max_size=4).map(tuple),
    gallery=st.none() | st.builds(Gallery, _opt_text, _opt_text),
    capture=st.none() | st.builds(Capture, _opt_text, _opt_text),
    intent=st.none()
    | st.builds(
        Intent,
        _opt_text,
        st.none() | st.floats(0, 1) | st.integers(0, 1),
    ),
    audio_count=st.integers(0, 2**40),
)


@given(_events)
def test_to_wire_reads_back_unchanged(e: RequestEvent) -> None:
    assert decode_request_message(orjson.dumps(e.to_wire())) == [e]


# --- DLQ record -------------------------------------------------------------------------------


def test_dead_letter_carries_reason_field_detail_raw_and_position() -> None:
    r = one(orjson.dumps(rec(gallery={"kind": 3})))
    assert isinstance(r, RejectedRecord)
    doc = orjson.loads(DeadLetter(r.rejection, r.raw, "api.requests", 2, 41).to_json())
    assert doc == {
        "reason": WRONG_TYPE,
        "field": "gallery.kind",
        "detail": r.rejection.detail,
        "raw": r.raw,
        "raw_truncated": False,
        "raw_bytes": len(r.raw.encode()),
        "raw_sha256": hashlib.sha256(r.raw.encode()).hexdigest(),
        "topic": "api.requests",
        "partition": 2,
        "offset": 41,
    }


def test_dead_letter_of_a_huge_message_is_bounded() -> None:
    # 200 KB of control bytes: JSON escapes each as six characters
    for data in (bytes(range(1, 32)) * 6600, b"x" * 1_000_000, "é".encode() * 40_000):
        (r,) = decode_request_message(data)
        assert isinstance(r, RejectedRecord)
        letter = DeadLetter(r.rejection, r.raw, "api.requests", 0, 1).to_json()
        doc = orjson.loads(letter)
        assert doc["raw_truncated"] is True
        assert doc["raw_bytes"] == len(data)
        assert doc["raw_sha256"] == hashlib.sha256(data).hexdigest()
        assert len(doc["raw"].encode()) <= RAW_LIMIT_BYTES
        assert data.decode().startswith(doc["raw"])
        assert len(letter) < 400_000


def test_raw_text() -> None:
    assert raw_text(None) == ""
    assert raw_text(b"ok") == "ok"
    assert raw_text("ok") == "ok"
    assert raw_text(b"a\xffb") == "a\ufffdb"
    assert "\ud800" not in raw_text("a\ud800b")
    assert raw_text("a\ud800b").startswith("a") and raw_text("a\ud800b").endswith("b")


# --- the fast acceptance path agrees with the detailed validator ---------------------------

_any_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 2**40),
    st.floats(-1, 2, allow_nan=False),
    st.text(max_size=6),
    st.lists(st.text(max_size=3), max_size=3),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(
        st.sampled_from(["id", "kind", "device", "setting", "label", "score"]),
        st.one_of(st.none(), st.text(max_size=4), st.floats(0, 1), st.integers(-1, 2)),
        max_size=3,
    ),
    st.sampled_from(["2026-11-18T07:00:00Z", "2026-11-18T07:00:00", "1969-01-01T00:00:00Z"]),
)
_fields = [
    "event_id",
    "ts",
    "account_id",
    "operation",
    "api_key_id",
    "model",
    "region",
    "client_ip",
    "image_count",
    "faces_detected",
    "subject_ids",
    "gallery",
    "capture",
    "intent",
]


@given(st.dictionaries(st.sampled_from(_fields), _any_value), st.sampled_from([{}, VALID]))
def test_fast_acceptance_agrees_with_the_validator(
    changes: dict[str, Any], base: dict[str, Any]
) -> None:
    from topics.requests import _validate, accepted_ts, build_event

    record = {**base, **changes}
    ts_ms = accepted_ts(record)
    fast = build_event(record, ts_ms) if ts_ms >= 0 else None
    try:
        slow: RequestEvent | None = _validate(record)
    except Exception:
        slow = None
    assert fast == slow
