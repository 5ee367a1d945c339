"""`api.accounts`: the compacted account metadata topic (SPEC 3)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from topics.dlq import MISSING_FIELD, NOT_JSON, NOT_OBJECT, OUT_OF_RANGE, WRONG_TYPE, Rejection
from topics.timestamps import TimestampError, parse_rfc3339_ms

SECTORS = (
    "law_enforcement",
    "government",
    "commercial",
    "education",
    "healthcare",
    "nonprofit",
    "other",
)
_COUNTRY = re.compile(r"[A-Z]{2}\Z")
#: SPEC 2.1's limits, which hold for account records too (SPEC 3)
MAX_STRING_CHARS = 1024
MAX_ARRAY_ITEMS = 1000


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """One account's metadata as the latest valid record on the accounts topic states it."""

    account_id: str
    org_id: str | None = None
    org_name: str | None = None
    sector: str | None = None
    acting_for: str | None = None
    country: str | None = None
    approved_uses: tuple[str, ...] = ()
    updated_at_ms: int | None = None
    deleted: bool = False

    def to_wire(self) -> dict[str, Any]:
        """The enrichment snapshot carried with an event between stages."""
        return {
            "account_id": self.account_id,
            "org_id": self.org_id,
            "org_name": self.org_name,
            "sector": self.sector,
            "acting_for": self.acting_for,
            "country": self.country,
            "approved_uses": list(self.approved_uses),
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> AccountRecord:
        """Inverse of `to_wire`."""
        return cls(
            account_id=wire["account_id"],
            org_id=wire["org_id"],
            org_name=wire["org_name"],
            sector=wire["sector"],
            acting_for=wire["acting_for"],
            country=wire["country"],
            approved_uses=tuple(wire["approved_uses"]),
        )


@dataclass(frozen=True, slots=True)
class AccountTombstone:
    """A null value on the compacted topic: the account is removed."""

    account_id: str


class _Invalid(Exception):
    def __init__(self, reason: str, field: str | None, detail: str) -> None:
        super().__init__(detail)
        self.rejection = Rejection(reason, field, detail)


def _opt_str(rec: dict[str, Any], field: str) -> str | None:
    v = rec.get(field)
    if v is None:
        return v
    if type(v) is not str:
        raise _Invalid(WRONG_TYPE, field, f"{field} must be a string or null")
    if len(v) > MAX_STRING_CHARS:
        raise _Invalid(OUT_OF_RANGE, field, f"{field} is longer than {MAX_STRING_CHARS} characters")
    return v


def _opt_sector(rec: dict[str, Any], field: str) -> str | None:
    v = _opt_str(rec, field)
    if v is not None and v not in SECTORS:
        raise _Invalid(OUT_OF_RANGE, field, f"{field} must be one of {', '.join(SECTORS)}")
    return v


def _validate(rec: dict[str, Any]) -> AccountRecord:
    account_id = rec.get("account_id")
    if account_id is None:
        raise _Invalid(MISSING_FIELD, "account_id", "required field account_id is missing")
    if type(account_id) is not str:
        raise _Invalid(WRONG_TYPE, "account_id", "account_id must be a string")
    if not account_id:
        raise _Invalid(OUT_OF_RANGE, "account_id", "account_id must not be empty")
    if len(account_id) > MAX_STRING_CHARS:
        raise _Invalid(
            OUT_OF_RANGE, "account_id", f"account_id is longer than {MAX_STRING_CHARS} characters"
        )
    country = _opt_str(rec, "country")
    if country is not None and not _COUNTRY.match(country):
        raise _Invalid(
            OUT_OF_RANGE, "country", "country must be an upper-case ISO 3166-1 alpha-2 code"
        )
    uses: tuple[str, ...] = ()
    uv = rec.get("approved_uses")
    if uv is not None:
        if type(uv) is not list or any(type(u) is not str for u in uv):
            raise _Invalid(WRONG_TYPE, "approved_uses", "approved_uses must be an array of strings")
        if len(uv) > MAX_ARRAY_ITEMS or any(len(u) > MAX_STRING_CHARS for u in uv):
            raise _Invalid(
                OUT_OF_RANGE,
                "approved_uses",
                f"approved_uses holds at most {MAX_ARRAY_ITEMS} strings of at most "
                f"{MAX_STRING_CHARS} characters",
            )
        uses = tuple(uv)
    updated_at_ms = None
    ua = rec.get("updated_at")
    if ua is not None:
        if type(ua) is not str:
            raise _Invalid(WRONG_TYPE, "updated_at", "updated_at must be an RFC 3339 string")
        try:
            updated_at_ms = parse_rfc3339_ms(ua)
        except TimestampError as exc:
            reason = OUT_OF_RANGE if exc.kind == "range" else WRONG_TYPE
            raise _Invalid(reason, "updated_at", f"updated_at: {exc}") from None
    deleted = rec.get("deleted")
    if deleted is None:
        deleted = False
    elif type(deleted) is not bool:
        raise _Invalid(WRONG_TYPE, "deleted", "deleted must be true or false")
    return AccountRecord(
        account_id=account_id,
        org_id=_opt_str(rec, "org_id"),
        org_name=_opt_str(rec, "org_name"),
        sector=_opt_sector(rec, "sector"),
        acting_for=_opt_sector(rec, "acting_for"),
        country=country,
        approved_uses=uses,
        updated_at_ms=updated_at_ms,
        deleted=deleted,
    )


def parse_account_record(rec: object) -> AccountRecord | Rejection:
    """Validate one decoded account record (SPEC 3)."""
    if type(rec) is not dict:
        return Rejection(NOT_OBJECT, None, "account record must be a JSON object")
    try:
        return _validate(rec)
    except _Invalid as exc:
        return exc.rejection


def decode_account_message(
    key: bytes | str | None, value: bytes | str | None
) -> AccountRecord | AccountTombstone | Rejection:
    """An `api.accounts` message: a record, a tombstone (null value), or why it is rejected."""
    if value is not None:
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return Rejection(NOT_JSON, None, f"not JSON: {exc}")
        if obj is not None:
            return parse_account_record(obj)
    # a missing value or a JSON `null` (in any spacing) is a tombstone
    if key is None:
        return Rejection(MISSING_FIELD, "account_id", "tombstone without a key")
    return AccountTombstone(key.decode("utf-8", "replace") if isinstance(key, bytes) else key)


class AccountDirectory:
    """The latest known state of every account; removed accounts are forgotten."""

    __slots__ = ("_accounts", "get", "known")

    def __init__(self) -> None:
        self._accounts: dict[str, AccountRecord] = {}
        # the dict's own lookups (it is never replaced): one C call each on the hot path
        self.get: Callable[[str], AccountRecord | None] = self._accounts.get
        self.known: Callable[[str], bool] = self._accounts.__contains__

    def apply(self, update: AccountRecord | AccountTombstone) -> None:
        """Apply one valid record or tombstone: the latest applied wins."""
        if isinstance(update, AccountTombstone) or update.deleted:
            self._accounts.pop(update.account_id, None)
        else:
            self._accounts[update.account_id] = update

    def __len__(self) -> int:
        return len(self._accounts)
