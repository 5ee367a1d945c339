"""`--since/--until/--account/--org`: which records of an archive a replay evaluates (SPEC 6)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from topics.accounts import AccountRecord
from topics.requests import RequestEvent
from topics.timestamps import TimestampError, format_ms, parse_rfc3339_ms


class SelectionError(ValueError):
    """A selection flag with a value that selects nothing meaningful; the message names it."""


@dataclass(frozen=True, slots=True)
class Selection:
    """Records in [since, until) of event time, of the named accounts or of the named orgs.

    Accounts and orgs add up: a record is selected when its account is named or its
    account's organisation (per the accounts file, SPEC 3) is. Events carry no org of their
    own (SPEC 2.1), so an unknown account belongs to no org.
    """

    since_ms: int | None = None
    until_ms: int | None = None
    accounts: frozenset[str] = frozenset()
    orgs: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if (
            self.since_ms is not None
            and self.until_ms is not None
            and self.until_ms <= self.since_ms
        ):
            raise SelectionError(
                f"--until {format_ms(self.until_ms)} is not after --since {format_ms(self.since_ms)}"
            )

    @property
    def narrows(self) -> bool:
        """Whether any flag was given (otherwise every valid record is selected)."""
        return bool(
            self.since_ms is not None or self.until_ms is not None or self.accounts or self.orgs
        )

    def admits(self, event: RequestEvent, account: AccountRecord | None) -> bool:
        """Whether the record is evaluated; `account` is its account's state (None: unknown)."""
        ts = event.ts_ms
        if self.since_ms is not None and ts < self.since_ms:
            return False
        if self.until_ms is not None and ts >= self.until_ms:
            return False
        if not (self.accounts or self.orgs):
            return True
        if event.account_id in self.accounts:
            return True
        return account is not None and account.org_id is not None and account.org_id in self.orgs

    def describe(self) -> str:
        """One line for the report: what was selected."""
        parts = []
        if self.since_ms is not None:
            parts.append(f"since {format_ms(self.since_ms)}")
        if self.until_ms is not None:
            parts.append(f"until {format_ms(self.until_ms)} (exclusive)")
        if self.accounts:
            parts.append("accounts " + ", ".join(sorted(self.accounts)))
        if self.orgs:
            parts.append("orgs " + ", ".join(sorted(self.orgs)))
        return "; ".join(parts) if parts else "every record"


def _time(flag: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_rfc3339_ms(text)
    except TimestampError as exc:
        raise SelectionError(
            f"{flag} {text!r}: not an RFC 3339 date-time with an offset"
            f" (e.g. 2026-11-18T07:00:00Z): {exc}"
        ) from None


def _ids(flag: str, values: Sequence[str] | None) -> frozenset[str]:
    for v in values or ():
        if not v.strip():
            raise SelectionError(f"{flag}: an empty id selects nothing")
    return frozenset(values or ())


def parse_selection(
    since: str | None,
    until: str | None,
    accounts: Sequence[str] | None,
    orgs: Sequence[str] | None,
) -> Selection:
    """The selection that the command-line flags describe; SelectionError names a bad value."""
    return Selection(
        since_ms=_time("--since", since),
        until_ms=_time("--until", until),
        accounts=_ids("--account", accounts),
        orgs=_ids("--org", orgs),
    )
