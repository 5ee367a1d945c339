"""`api.accounts` records, tombstones and the account directory (SPEC 3)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from topics.accounts import (
    SECTORS,
    AccountDirectory,
    AccountRecord,
    AccountTombstone,
    decode_account_message,
    parse_account_record,
)
from topics.dlq import (
    MISSING_FIELD,
    NOT_JSON,
    NOT_OBJECT,
    OUT_OF_RANGE,
    RAW_LIMIT_BYTES,
    WRONG_TYPE,
    DeadLetter,
    Rejection,
    raw_text,
)

FULL: dict[str, Any] = {
    "account_id": "acct-1",
    "org_id": "org-1",
    "org_name": "Example County Sheriff",
    "sector": "law_enforcement",
    "acting_for": "government",
    "country": "US",
    "approved_uses": ["identification"],
    "updated_at": "2026-11-18T07:00:00Z",
    "deleted": False,
}


def acc(**changes: Any) -> dict[str, Any]:
    """FULL with fields changed; a value of ... removes the field."""
    out = dict(FULL)
    for k, v in changes.items():
        if v is ...:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def accepted(record: object) -> AccountRecord:
    r = parse_account_record(record)
    assert isinstance(r, AccountRecord), r
    return r


def rejected(record: object) -> Rejection:
    r = parse_account_record(record)
    assert isinstance(r, Rejection), r
    return r


def test_full_record() -> None:
    assert accepted(FULL) == AccountRecord(
        "acct-1",
        "org-1",
        "Example County Sheriff",
        "law_enforcement",
        "government",
        "US",
        ("identification",),
        1_794_985_200_000,
        False,
    )


def test_minimal_record_takes_the_defaults() -> None:
    assert accepted({"account_id": "a"}) == AccountRecord("a")
    r = accepted({"account_id": "a"})
    assert r.approved_uses == ()
    assert r.deleted is False
    assert (r.org_id, r.org_name, r.sector, r.acting_for, r.country, r.updated_at_ms) == (
        None,
        None,
        None,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    "field",
    ["org_id", "org_name", "sector", "acting_for", "country", "approved_uses", "updated_at"],
)
def test_nullable_field_may_be_null(field: str) -> None:
    r = accepted(acc(**{field: None}))
    assert r == accepted(acc(**{field: ...}))


def test_null_deleted_means_false() -> None:
    assert accepted(acc(deleted=None)).deleted is False


def test_unknown_extra_fields_are_ignored() -> None:
    assert accepted(acc(tier="gold", notes={"x": 1})) == accepted(FULL)


@pytest.mark.parametrize("sector", SECTORS)
def test_every_listed_sector_is_valid_for_sector_and_acting_for(sector: str) -> None:
    assert accepted(acc(sector=sector)).sector == sector
    assert accepted(acc(acting_for=sector)).acting_for == sector


def test_sector_set_is_the_one_in_the_spec() -> None:
    assert set(SECTORS) == {
        "law_enforcement",
        "government",
        "commercial",
        "education",
        "healthcare",
        "nonprofit",
        "other",
    }


@pytest.mark.parametrize("field", ["account_id"])
@pytest.mark.parametrize("value", [..., None])
def test_account_id_absent_or_null_is_missing_field(field: str, value: object) -> None:
    r = rejected(acc(**{field: value}))
    assert (r.reason, r.field) == (MISSING_FIELD, "account_id")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("account_id", 1),
        ("account_id", True),
        ("account_id", ["acct-1"]),
        ("org_id", 1),
        ("org_name", {"en": "x"}),
        ("sector", 1),
        ("sector", ["law_enforcement"]),
        ("acting_for", True),
        ("country", 840),
        ("country", ["US"]),
        ("approved_uses", "identification"),
        ("approved_uses", ["identification", 1]),
        ("approved_uses", [None]),
        ("approved_uses", {"identification": True}),
        ("updated_at", 1_794_985_200_000),
        ("updated_at", "2026-11-18"),
        ("updated_at", "2026-11-18T07:00:00"),
        ("updated_at", True),
        ("deleted", "true"),
        ("deleted", 1),
        ("deleted", 0),
        ("deleted", []),
    ],
)
def test_field_of_the_wrong_type_is_wrong_type(field: str, value: object) -> None:
    r = rejected(acc(**{field: value}))
    assert (r.reason, r.field) == (WRONG_TYPE, field)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("account_id", ""),
        ("sector", "police"),
        ("sector", "Law_Enforcement"),
        ("sector", "law enforcement"),
        ("sector", ""),
        ("acting_for", "LAW_ENFORCEMENT"),
        ("acting_for", "military"),
        ("country", "us"),
        ("country", "Us"),
        ("country", "USA"),
        ("country", "U"),
        ("country", ""),
        ("country", "U1"),
        ("country", "ÜS"),
        ("country", "US\n"),
        ("updated_at", "2026-13-01T00:00:00Z"),
        ("updated_at", "2026-02-29T00:00:00Z"),
    ],
)
def test_value_outside_its_type_or_set_is_out_of_range(field: str, value: object) -> None:
    r = rejected(acc(**{field: value}))
    assert (r.reason, r.field) == (OUT_OF_RANGE, field)


def test_updated_at_accepts_any_rfc3339_form() -> None:
    assert (
        accepted(acc(updated_at="2026-11-18t08:00:00.5+01:00")).updated_at_ms == 1_794_985_200_500
    )


@pytest.mark.parametrize("value", [[], [FULL], "acct-1", 1, True])
def test_record_that_is_not_an_object_is_not_object(value: object) -> None:
    assert rejected(value).reason == NOT_OBJECT


def test_to_wire_is_the_enrichment_snapshot() -> None:
    assert accepted(FULL).to_wire() == {
        "account_id": "acct-1",
        "org_id": "org-1",
        "org_name": "Example County Sheriff",
        "sector": "law_enforcement",
        "acting_for": "government",
        "country": "US",
        "approved_uses": ["identification"],
    }


# --- messages ---------------------------------------------------------------------------------


def test_message_with_a_record() -> None:
    assert decode_account_message(b"acct-1", orjson.dumps(FULL)) == accepted(FULL)
    assert decode_account_message(None, orjson.dumps(FULL).decode()) == accepted(FULL)


@pytest.mark.parametrize("value", [None, b"null", "null", b" null\n", "\tnull "])
def test_null_value_is_a_tombstone_for_the_key(value: bytes | str | None) -> None:
    assert decode_account_message(b"acct-1", value) == AccountTombstone("acct-1")
    assert decode_account_message("acct-2", value) == AccountTombstone("acct-2")


def test_tombstone_without_a_key_is_rejected() -> None:
    r = decode_account_message(None, None)
    assert isinstance(r, Rejection)
    assert (r.reason, r.field) == (MISSING_FIELD, "account_id")


@pytest.mark.parametrize(
    "value", [b"{", b"", b"NaN", b'{"account_id": "a", "x": NaN}', b'{"account_id": "\xff"}']
)
def test_value_that_is_not_json_is_not_json(value: bytes) -> None:
    r = decode_account_message(b"a", value)
    assert isinstance(r, Rejection)
    assert r.reason == NOT_JSON


def test_value_that_is_json_but_not_an_object_is_not_object() -> None:
    r = decode_account_message(b"a", b"[]")
    assert isinstance(r, Rejection)
    assert r.reason == NOT_OBJECT


def test_deleted_true_record_is_a_record_with_deleted_set() -> None:
    r = decode_account_message(b"acct-1", orjson.dumps(acc(deleted=True)))
    assert isinstance(r, AccountRecord)
    assert r.deleted is True


def test_deleted_record_is_still_validated() -> None:
    r = decode_account_message(b"acct-1", orjson.dumps(acc(deleted=True, country="usa")))
    assert isinstance(r, Rejection)
    assert r.field == "country"


# --- directory --------------------------------------------------------------------------------


def test_unknown_account_is_none() -> None:
    d = AccountDirectory()
    assert d.get("acct-1") is None
    assert len(d) == 0


def test_latest_record_applied_wins_whatever_its_updated_at() -> None:
    d = AccountDirectory()
    newer = accepted(acc(sector="commercial", updated_at="2027-01-01T00:00:00Z"))
    older = accepted(acc(sector="law_enforcement", updated_at="2020-01-01T00:00:00Z"))
    d.apply(newer)
    d.apply(older)
    assert d.get("acct-1") == older
    assert len(d) == 1


def test_a_new_record_replaces_every_field() -> None:
    d = AccountDirectory()
    d.apply(accepted(FULL))
    d.apply(accepted({"account_id": "acct-1"}))
    assert d.get("acct-1") == AccountRecord("acct-1")


@pytest.mark.parametrize(
    "removal", [AccountTombstone("acct-1"), AccountRecord("acct-1", deleted=True)]
)
def test_tombstone_or_deleted_true_removes_the_account(
    removal: AccountTombstone | AccountRecord,
) -> None:
    d = AccountDirectory()
    d.apply(accepted(FULL))
    d.apply(accepted(acc(account_id="acct-2")))
    d.apply(removal)
    assert d.get("acct-1") is None
    assert d.get("acct-2") is not None
    assert len(d) == 1
    d.apply(accepted(FULL))  # a later record brings it back
    assert d.get("acct-1") == accepted(FULL)


def test_removing_an_unknown_account_is_harmless() -> None:
    d = AccountDirectory()
    d.apply(AccountTombstone("nobody"))
    d.apply(AccountRecord("nobody", deleted=True))
    assert len(d) == 0
    assert d.get("nobody") is None


def test_rejected_record_leaves_the_previous_state() -> None:
    d = AccountDirectory()
    d.apply(accepted(FULL))
    for value in (orjson.dumps(acc(sector="police", org_id="org-2")), b"{", b"[]"):
        r = decode_account_message(b"acct-1", value)
        assert isinstance(r, Rejection)  # nothing to apply: the account keeps its state
    assert d.get("acct-1") == accepted(FULL)


def test_accounts_are_independent() -> None:
    d = AccountDirectory()
    for i in range(5):
        d.apply(accepted(acc(account_id=f"acct-{i}", org_id="org-shared")))
    assert len(d) == 5
    records = [d.get(f"acct-{i}") for i in range(5)]
    assert {r.org_id for r in records if r is not None} == {"org-shared"}


def test_wire_snapshot_round_trips() -> None:
    rec = accepted(FULL)
    again = AccountRecord.from_wire(rec.to_wire())
    assert again.to_wire() == rec.to_wire()
    assert again.approved_uses == rec.approved_uses


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("org_name", "n" * 1_000_000),
        ("org_id", "o" * 1025),
        ("account_id", "a" * 1025),
        ("approved_uses", ["identification"] * 1001),
        ("approved_uses", ["u" * 1025]),
    ],
)
def test_over_long_strings_and_arrays_are_out_of_range(field: str, value: object) -> None:
    r = rejected(acc(**{field: value}))
    assert (r.reason, r.field) == (OUT_OF_RANGE, field)
    assert len(r.detail) < 200


def test_a_1mb_rejected_account_record_gives_a_bounded_dead_letter() -> None:
    value = orjson.dumps(acc(org_name="n" * 1_000_000))
    verdict = decode_account_message(b"acct-1", value)
    assert isinstance(verdict, Rejection) and verdict.reason == OUT_OF_RANGE
    letter = orjson.loads(DeadLetter(verdict, raw_text(value), "api.accounts", 0, 3).to_json())
    assert letter["raw_truncated"] is True and letter["raw_bytes"] == len(value)
    assert len(letter["raw"].encode()) <= RAW_LIMIT_BYTES
