"""Exception records (SPEC 4.4): every field validated, one-line errors naming it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.classify import EnrichedEvent
from streams.core.rules import builtin_classification
from topics.accounts import AccountRecord
from topics.exceptions import (
    MAX_VALIDITY_MS,
    ExceptionError,
    ExceptionRecord,
    ExceptionSet,
    ExceptionsFileError,
    ExceptionTombstone,
    decode_exception_message,
    load_exceptions,
    parse_exception,
)
from topics.requests import RequestEvent, parse_request_record
from topics.timestamps import format_ms, parse_rfc3339_ms

CREATED = "2026-11-01T00:00:00.000Z"
EXPIRES = "2026-12-01T00:00:00.000Z"


def record(**changes: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "exception_id": "EX-kyc-1",
        "rules": ["FR-006"],
        "match": {"field": "account_id", "equals": "acct-kyc"},
        "reason": "approved identification use case (limited access review)",
        "owner": "trust-and-safety@example.com",
        "ticket": "LA-1234",
        "created_at": CREATED,
        "expires_at": EXPIRES,
    }
    rec.update(changes)
    return {k: v for k, v in rec.items() if v is not ...}


def event(ts: int, account_id: str = "acct-kyc", **extra: Any) -> EnrichedEvent:
    raw = {"event_id": f"e-{ts}", "ts": ts, "account_id": account_id, "operation": "face.identify"}
    ev = parse_request_record({**raw, **extra})
    assert isinstance(ev, RequestEvent)
    return EnrichedEvent(ev, AccountRecord(account_id, org_id="org-1"), builtin_classification())


def test_a_valid_record_round_trips() -> None:
    x = parse_exception(record())
    assert x.exception_id == "EX-kyc-1" and x.rules == ("FR-006",) and x.ticket == "LA-1234"
    assert x.created_at_ms == parse_rfc3339_ms(CREATED)
    assert parse_exception(x.to_wire()) == x
    assert orjson.loads(x.to_json()) == record()


def test_ticket_may_be_null_or_absent_and_unknown_fields_are_ignored() -> None:
    assert parse_exception(record(ticket=None)).ticket is None
    assert parse_exception(record(ticket=...)).ticket is None
    assert parse_exception(record(note="kept by nobody")).exception_id == "EX-kyc-1"


@pytest.mark.parametrize(
    ("changes", "reason", "field"),
    [
        ({"exception_id": ...}, "missing_field", "exception_id"),
        ({"exception_id": 7}, "wrong_type", "exception_id"),
        ({"exception_id": "kyc-1"}, "out_of_range", "exception_id"),
        ({"exception_id": "EX-"}, "out_of_range", "exception_id"),
        ({"rules": ...}, "missing_field", "rules"),
        ({"rules": "FR-006"}, "wrong_type", "rules"),
        ({"rules": [6]}, "wrong_type", "rules"),
        ({"rules": []}, "out_of_range", "rules"),
        ({"rules": ["*", "FR-006"]}, "out_of_range", "rules"),
        ({"rules": ["FR 006"]}, "out_of_range", "rules"),
        ({"match": ...}, "missing_field", "match"),
        ({"match": None}, "missing_field", "match"),
        ({"match": "account_id == x"}, "wrong_type", "match"),
        ({"match": {"field": "acount_id", "equals": "x"}}, "out_of_range", "match.field"),
        ({"match": {"field": "account_id", "gte": 3}}, "out_of_range", "match.gte"),
        ({"match": {"all": [{"ref": "identification"}]}}, "out_of_range", "match.all[0].ref"),
        ({"reason": ...}, "missing_field", "reason"),
        ({"reason": ""}, "out_of_range", "reason"),
        ({"reason": "   "}, "out_of_range", "reason"),
        ({"reason": ["x"]}, "wrong_type", "reason"),
        ({"owner": ...}, "missing_field", "owner"),
        ({"owner": None}, "missing_field", "owner"),
        ({"owner": ""}, "out_of_range", "owner"),
        ({"owner": "x" * 1025}, "out_of_range", "owner"),
        ({"ticket": ""}, "out_of_range", "ticket"),
        ({"ticket": 12}, "wrong_type", "ticket"),
        ({"created_at": ...}, "missing_field", "created_at"),
        ({"created_at": 1764547200000}, "wrong_type", "created_at"),
        ({"created_at": "2026-11-01"}, "wrong_type", "created_at"),
        ({"expires_at": ...}, "missing_field", "expires_at"),
        ({"expires_at": "2026-02-30T00:00:00Z"}, "out_of_range", "expires_at"),
        ({"expires_at": CREATED}, "out_of_range", "expires_at"),
        ({"expires_at": "2026-10-01T00:00:00Z"}, "out_of_range", "expires_at"),
        ({"expires_at": format_ms(parse_rfc3339_ms(CREATED) + MAX_VALIDITY_MS + 1)},
         "out_of_range", "expires_at"),
    ],
)  # fmt: skip
def test_each_invalid_field_is_named(changes: dict[str, Any], reason: str, field: str) -> None:
    with pytest.raises(ExceptionError) as caught:
        parse_exception(record(**changes))
    assert (caught.value.reason, caught.value.field) == (reason, field)
    message = str(caught.value)
    assert message.startswith(f"field {field}: ") and "\n" not in message


def test_expiry_may_be_exactly_366_days_after_creation() -> None:
    at_most = format_ms(parse_rfc3339_ms(CREATED) + MAX_VALIDITY_MS)
    assert (
        parse_exception(record(expires_at=at_most)).expires_at_ms - parse_rfc3339_ms(CREATED)
        == MAX_VALIDITY_MS
    )


def test_not_an_object() -> None:
    with pytest.raises(ExceptionError) as caught:
        parse_exception(["EX-1"])
    assert caught.value.reason == "not_object"


def test_topic_messages_record_tombstone_and_rejections() -> None:
    good = orjson.dumps(record())
    assert isinstance(decode_exception_message(b"EX-kyc-1", good), ExceptionRecord)
    assert decode_exception_message(b"EX-kyc-1", None) == ExceptionTombstone("EX-kyc-1")
    assert decode_exception_message(b"", None).reason == "missing_field"  # type: ignore[union-attr]
    bad = decode_exception_message(b"EX-kyc-1", b"{not json")
    assert bad.reason == "not_json"  # type: ignore[union-attr]
    # compaction keeps one value per key: a key that is not the id would outlive its removal
    mis = decode_exception_message(b"EX-other", good)
    assert (mis.reason, mis.field) == ("out_of_range", "exception_id")  # type: ignore[union-attr]
    no_owner = decode_exception_message(b"EX-kyc-1", orjson.dumps(record(owner="")))
    assert (no_owner.reason, no_owner.field) == ("out_of_range", "owner")  # type: ignore[union-attr]


def test_validity_by_event_time_at_both_edges() -> None:
    x = parse_exception(record())
    covered = ExceptionSet([x])
    start, end = x.created_at_ms, x.expires_at_ms
    assert covered.covers("FR-006", event(start - 1)) is None
    assert covered.covers("FR-006", event(start)) == "EX-kyc-1"
    assert covered.covers("FR-006", event(end - 1)) == "EX-kyc-1"
    assert covered.covers("FR-006", event(end)) is None


def test_only_listed_rules_and_matching_events_are_covered() -> None:
    ts = parse_rfc3339_ms("2026-11-15T12:00:00Z")
    covered = ExceptionSet([parse_exception(record())])
    assert covered.covers("FR-001", event(ts)) is None
    assert covered.covers("FR-006", event(ts, "acct-other")) is None
    every = ExceptionSet([parse_exception(record(rules=["*"]))])
    assert every.covers("FR-001", event(ts)) == "EX-kyc-1"
    assert every.covers("ANY-RULE", event(ts)) == "EX-kyc-1"


def test_the_first_covering_id_in_id_order_takes_the_hit() -> None:
    ts = parse_rfc3339_ms("2026-11-15T12:00:00Z")
    both = ExceptionSet(
        [
            parse_exception(record(exception_id="EX-b")),
            parse_exception(record(exception_id="EX-a", rules=["*"])),
        ]
    )
    assert both.covers("FR-006", event(ts)) == "EX-a"


def test_an_empty_set_covers_nothing() -> None:
    assert not ExceptionSet()
    assert ExceptionSet().covers("FR-006", event(0)) is None


def test_active_at_wall_clock() -> None:
    x = parse_exception(record())
    s = ExceptionSet([x])
    assert s.active_at(x.created_at_ms) == 1
    assert s.active_at(x.expires_at_ms) == 0


def test_exceptions_file_lines_and_errors() -> None:
    text = b"\n".join([orjson.dumps(record()), b"", orjson.dumps(record(exception_id="EX-2"))])
    assert [x.exception_id for x in load_exceptions("ex.jsonl", text).exceptions] == [
        "EX-2",
        "EX-kyc-1",
    ]
    bad = orjson.dumps(record()) + b"\n" + orjson.dumps(record(owner=""))
    with pytest.raises(ExceptionsFileError) as caught:
        load_exceptions("ex.jsonl", bad)
    assert str(caught.value) == "ex.jsonl:2: field owner: owner must not be empty"
    with pytest.raises(ExceptionsFileError, match=r"^ex.jsonl:1: not JSON"):
        load_exceptions("ex.jsonl", b"{")


_ACCOUNTS = ["acct-1", "acct-2", "acct-3"]
_MATCHES = [
    *({"field": "account_id", "equals": a} for a in _ACCOUNTS),
    {"field": "account.org_id", "equals": "org-1"},
    {"field": "api_key_id", "equals": "key-1"},
    {"field": "account_id", "in": ["acct-1", "acct-2"]},
    {"all": [{"field": "account_id", "equals": "acct-3"}, {"field": "image_count", "gte": 1}]},
]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(_MATCHES),
            st.sampled_from([["FR-001"], ["FR-006"], ["*"], ["FR-001", "FR-006"]]),
            st.integers(0, 4),
            st.integers(1, 4),
        ),
        max_size=12,
    ),
    st.lists(
        st.tuples(
            st.sampled_from(_ACCOUNTS),
            st.sampled_from([None, "key-1", "key-2"]),
            st.integers(0, 8),
            st.integers(0, 2),
            st.sampled_from(["FR-001", "FR-006", "FR-004"]),
        ),
        min_size=1,
        max_size=10,
    ),
)
def test_the_index_answers_as_checking_every_exception(
    specs: list[tuple[Any, list[str], int, int]], events: list[tuple[Any, ...]]
) -> None:
    hour = 3_600_000
    base = parse_rfc3339_ms(CREATED)
    records = [
        parse_exception(
            record(exception_id=f"EX-{i:02d}", match=m, rules=rules,
                   created_at=format_ms(base + start * hour),
                   expires_at=format_ms(base + (start + length) * hour))
        )
        for i, (m, rules, start, length) in enumerate(specs)
    ]  # fmt: skip
    s = ExceptionSet(records)
    for account, key, at, images, rule in events:
        ee = event(base + at * hour, account, api_key_id=key, image_count=images)
        naive = min(
            (x.exception_id for x in records
             if x.applies_to(rule) and x.in_force_at(ee.event.ts_ms) and x.predicate(ee)),
            default=None,
        )  # fmt: skip
        assert s.covers(rule, ee) == naive
