"""The C-speed path of `decode_request_message` (msgspec) against the strict one (orjson).

Whatever the fast path accepts, the strict path accepts with the same event; whatever the
strict path refuses, the fast path refuses (then the strict path names the reason).
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from topics.requests import (
    MAX_EVENT_ID_CHARS,
    MAX_STRING_CHARS,
    RequestEvent,
    checked_event,
    decode_request_message,
    decode_request_message_strict,
    fast_event,
    parse_request_record,
    parse_request_record_strict,
)
from topics.timestamps import MAX_TS_MS

VALID = {
    "event_id": "e-1",
    "ts": "2026-11-18T07:00:00.123+01:00",
    "account_id": "acct-1",
    "operation": "face.identify",
}

NESTED = {"gallery": {"id", "kind"}, "capture": {"device", "setting"}, "intent": {"label", "score"}}

# values of every JSON type near each field's limits
_any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_timestamps = st.one_of(
    st.integers(-5, MAX_TS_MS + 5),
    st.datetimes().map(lambda d: d.isoformat()),
    st.builds(
        lambda d, frac, tail, t: d.strftime(f"%Y-%m-%d{t}%H:%M:%S") + frac + tail,
        st.datetimes(),
        st.sampled_from(["", ".1", ".123", ".123456", ".1234567", ".", ".12a", ".٢"]),
        st.sampled_from(["Z", "z", "+01:00", "-05:30", "+23:59", "+24:00", "-00:60", "", "+0100"]),
        st.sampled_from(["T", "t", " "]),
    ),
    _any_json,
)
_strings = st.one_of(
    st.text(max_size=6),
    st.just(""),
    st.integers(MAX_EVENT_ID_CHARS - 1, MAX_EVENT_ID_CHARS + 1).map(lambda n: "é" * n),
    st.integers(MAX_STRING_CHARS - 1, MAX_STRING_CHARS + 1).map(lambda n: "🚀" * n),
    _any_json,
)
_counts = st.one_of(st.integers(-2, 3), st.just(2**64), _any_json)
_scores = st.one_of(st.integers(-1, 2), st.floats(-0.5, 1.5), st.just(1.0), _any_json)


def _object(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    return st.one_of(st.fixed_dictionaries({}, optional=fields), _any_json)


_records = st.fixed_dictionaries(
    {},
    optional={
        "event_id": _strings,
        "ts": _timestamps,
        "account_id": _strings,
        "operation": _strings,
        "api_key_id": _strings,
        "model": _strings,
        "region": _strings,
        "client_ip": _strings,
        "image_count": _counts,
        "audio_count": _counts,
        "faces_detected": _counts,
        "subject_ids": st.one_of(st.lists(_strings, max_size=3), _any_json),
        "gallery": _object({"id": _strings, "kind": _strings}),
        "capture": _object({"device": _strings, "setting": _strings}),
        "intent": _object({"label": _strings, "score": _scores}),
        "extra": _any_json,
    },
)


def _agree(line: bytes) -> None:
    strict = decode_request_message_strict(line)
    fast = fast_event(line)
    if fast is not None:
        assert strict == [fast]
        assert type(fast) is RequestEvent
    assert decode_request_message(line) == strict
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return
    assert parse_request_record(rec) == parse_request_record_strict(rec)
    checked = checked_event(rec) if type(rec) is dict else None
    if checked is not None:
        assert parse_request_record_strict(rec) == checked


@settings(max_examples=600)
@given(base=_records, keep_required=st.booleans())
def test_fast_path_agrees_with_the_strict_one(base: dict[str, Any], keep_required: bool) -> None:
    rec = {**VALID, **base} if keep_required else base
    line = json.dumps(rec, ensure_ascii=False).encode()
    _agree(line)


@given(base=_records)
def test_a_valid_record_takes_a_fast_path(base: dict[str, Any]) -> None:
    """SPEC 2.1's fields only: msgspec decodes the text; with others, it checks orjson's dict."""
    rec = {**base, **VALID}
    line = json.dumps(rec, ensure_ascii=False).encode()
    if type(decode_request_message_strict(line)[0]) is not RequestEvent:
        return
    assert checked_event(orjson.loads(line)) is not None
    if "extra" not in rec and all(
        type(rec.get(name)) is not dict or set(rec[name]) <= keys for name, keys in NESTED.items()
    ):
        assert fast_event(line) is not None


@given(st.binary(max_size=12), st.integers(0, 200))
@example(b"\xff", 40)  # invalid UTF-8 in a field msgspec skips
@example(b"\xed\xa0\x80", 40)  # a UTF-8-encoded surrogate
@example(b"\xef\xbb\xbf", 0)  # a byte order mark
def test_damaged_lines_agree(junk: bytes, at: int) -> None:
    line = orjson.dumps({**VALID, "extra": "x" * 20, "intent": {"label": "none"}})
    at = min(at, len(line))
    _agree(line[:at] + junk + line[at:])


def test_duplicate_keys_take_the_last_value_on_both_paths() -> None:
    _agree(b'{"event_id":"a","event_id":7,"ts":1,"account_id":"a","operation":"o"}')
    _agree(b'{"event_id":7,"event_id":"a","ts":1,"account_id":"a","operation":"o"}')


def test_deep_nesting_in_an_ignored_field() -> None:
    for depth in (500, 1000, 1023, 1024, 1100):
        extra = b"[" * depth + b"]" * depth
        _agree(b'{"event_id":"a","ts":1,"account_id":"a","operation":"o","x":' + extra + b"}")


def test_an_integer_score_stays_an_integer() -> None:
    ev = fast_event(orjson.dumps({**VALID, "intent": {"label": "identify_person", "score": 1}}))
    assert ev is not None and ev.intent is not None
    assert type(ev.intent.score) is int


def test_batches_and_rejections_take_the_strict_path() -> None:
    batch = orjson.dumps({"records": [VALID, {**VALID, "ts": "yesterday"}]})
    assert fast_event(batch) is None
    out = decode_request_message(batch)
    assert type(out[0]) is RequestEvent and type(out[1]) is not RequestEvent
