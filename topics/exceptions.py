"""`frwatch.exceptions`: approved or known-benign uses kept from rules (SPEC 4.4).

One record per exception_id on a compacted topic (a tombstone removes it), or one per line
of a `replay --exceptions` file. Validation is strict about what an exception says (every
field SPEC 4.4 names, with its type and bounds; the match compiled with the rules file's
condition language) and, like account records, ignores fields it does not know.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.core.classify import EnrichedEvent
from streams.core.conditions import FIELDS, ConditionError, Predicate, compile_condition
from topics.dlq import MISSING_FIELD, NOT_JSON, NOT_OBJECT, OUT_OF_RANGE, WRONG_TYPE, Rejection
from topics.timestamps import TimestampError, format_ms, parse_rfc3339_ms

#: the longest an exception may last: expires_at - created_at (SPEC 4.4)
MAX_VALIDITY_MS = 366 * 86_400_000
MAX_TEXT_CHARS = 1024
MAX_RULES = 1000
ALL_RULES = "*"
_EXCEPTION_ID = re.compile(r"EX-[A-Za-z0-9_.:-]{1,64}\Z")
_RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")  # as streams.core.rules


class ExceptionError(ValueError):
    """An invalid exception: one line naming the field; `reason` is the dead letter's."""

    def __init__(self, reason: str, field: str | None, detail: str) -> None:
        super().__init__(f"field {field}: {detail}" if field else detail)
        self.reason, self.field, self.detail = reason, field, detail

    def rejection(self) -> Rejection:
        """As a dead letter's reason, field and detail."""
        return Rejection(self.reason, self.field, self.detail)


@dataclass(frozen=True, slots=True)
class ExceptionRecord:
    """One valid exception (SPEC 4.4); times are epoch milliseconds."""

    exception_id: str
    rules: tuple[str, ...]  # rule ids, or ("*",)
    match: Any  # the condition as written (JSON)
    reason: str
    owner: str
    ticket: str | None
    created_at_ms: int
    expires_at_ms: int
    predicate: Predicate = field(compare=False, repr=False, default=lambda ee: False)

    def applies_to(self, rule_id: str) -> bool:
        """Whether the exception lists the rule (or every rule)."""
        return self.rules == (ALL_RULES,) or rule_id in self.rules

    def in_force_at(self, ts_ms: int) -> bool:
        """created_at <= ts < expires_at."""
        return self.created_at_ms <= ts_ms < self.expires_at_ms

    def to_wire(self) -> dict[str, Any]:
        """The record as the topic and exceptions files hold it."""
        return {
            "exception_id": self.exception_id,
            "rules": list(self.rules),
            "match": self.match,
            "reason": self.reason,
            "owner": self.owner,
            "ticket": self.ticket,
            "created_at": format_ms(self.created_at_ms),
            "expires_at": format_ms(self.expires_at_ms),
        }

    def to_json(self) -> bytes:
        """The topic's value."""
        return orjson.dumps(self.to_wire())


@dataclass(frozen=True, slots=True)
class ExceptionTombstone:
    """A null value on the compacted topic: the exception is removed."""

    exception_id: str


def _text(rec: dict[str, Any], name: str, optional: bool = False) -> str | None:
    v = rec.get(name)
    if v is None:
        if optional:
            return None
        raise ExceptionError(MISSING_FIELD, name, f"{name} is required")
    if type(v) is not str:
        raise ExceptionError(WRONG_TYPE, name, f"{name} must be a string")
    if not v.strip():
        raise ExceptionError(OUT_OF_RANGE, name, f"{name} must not be empty")
    if len(v) > MAX_TEXT_CHARS:
        raise ExceptionError(
            OUT_OF_RANGE, name, f"{name} is longer than {MAX_TEXT_CHARS} characters"
        )
    return v


def _time(rec: dict[str, Any], name: str) -> int:
    v = rec.get(name)
    if v is None:
        raise ExceptionError(MISSING_FIELD, name, f"{name} is required")
    if type(v) is not str:
        raise ExceptionError(WRONG_TYPE, name, f"{name} must be an RFC 3339 date-time string")
    try:
        return parse_rfc3339_ms(v)
    except TimestampError as exc:
        reason = OUT_OF_RANGE if exc.kind == "range" else WRONG_TYPE
        raise ExceptionError(reason, name, f"{v!r}: {exc}") from None


def _rules(rec: dict[str, Any]) -> tuple[str, ...]:
    v = rec.get("rules")
    if v is None:
        raise ExceptionError(MISSING_FIELD, "rules", 'rules is required (rule ids, or ["*"])')
    if type(v) is not list or any(type(r) is not str for r in v):
        raise ExceptionError(WRONG_TYPE, "rules", "rules must be an array of rule ids")
    if not v:
        raise ExceptionError(OUT_OF_RANGE, "rules", 'rules must name a rule, or be ["*"]')
    if len(v) > MAX_RULES:
        raise ExceptionError(OUT_OF_RANGE, "rules", f"rules holds at most {MAX_RULES} ids")
    if ALL_RULES in v:
        if len(v) != 1:
            raise ExceptionError(OUT_OF_RANGE, "rules", '"*" (every rule) stands alone')
        return (ALL_RULES,)
    for r in v:
        if not _RULE_ID.match(r):
            raise ExceptionError(OUT_OF_RANGE, "rules", f"{r!r} is not a rule id")
    return tuple(dict.fromkeys(v))


def _match(rec: dict[str, Any]) -> Predicate:
    if "match" not in rec or rec["match"] is None:
        raise ExceptionError(MISSING_FIELD, "match", "match is required (a condition)")
    try:
        return compile_condition(rec["match"], "match", {}, {})
    except ConditionError as exc:
        reason = WRONG_TYPE if exc.path == "match" else OUT_OF_RANGE
        raise ExceptionError(reason, exc.path, str(exc)) from None
    except RecursionError:
        raise ExceptionError(OUT_OF_RANGE, "match", "the condition is nested too deep") from None


def parse_exception(rec: object) -> ExceptionRecord:
    """Validate one decoded exception; ExceptionError names the first bad field."""
    if type(rec) is not dict:
        raise ExceptionError(NOT_OBJECT, None, "an exception must be a JSON object")
    exception_id = _text(rec, "exception_id")
    assert exception_id is not None
    if not _EXCEPTION_ID.match(exception_id):
        raise ExceptionError(
            OUT_OF_RANGE,
            "exception_id",
            "exception_id must be EX- and 1-64 letters, digits, _ . : -",
        )
    rules = _rules(rec)
    predicate = _match(rec)
    reason = _text(rec, "reason")
    owner = _text(rec, "owner")
    ticket = _text(rec, "ticket", optional=True)
    created = _time(rec, "created_at")
    expires = _time(rec, "expires_at")
    if expires <= created:
        raise ExceptionError(OUT_OF_RANGE, "expires_at", "expires_at must be after created_at")
    if expires - created > MAX_VALIDITY_MS:
        raise ExceptionError(
            OUT_OF_RANGE, "expires_at", "expires_at may be at most 366 days after created_at"
        )
    assert reason is not None and owner is not None
    return ExceptionRecord(
        exception_id, rules, rec["match"], reason, owner, ticket, created, expires, predicate
    )


def parse_exception_json(data: bytes | str) -> ExceptionRecord:
    """One exception from its JSON text (ExceptionError when invalid)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ExceptionError(NOT_JSON, None, f"not JSON: {exc}") from None
    return parse_exception(obj)


def decode_exception_message(
    key: bytes | None, value: bytes | None
) -> ExceptionRecord | ExceptionTombstone | Rejection:
    """A `frwatch.exceptions` message: an exception, a tombstone, or why it is rejected.

    The key must be the record's exception_id: compaction keeps the latest value per key,
    and a tombstone removes what its key names.
    """
    if value is None:
        if not key:
            return Rejection(MISSING_FIELD, "exception_id", "tombstone without a key")
        return ExceptionTombstone(key.decode("utf-8", "replace"))
    try:
        rec = parse_exception_json(value)
    except ExceptionError as exc:
        return exc.rejection()
    if key is None or key.decode("utf-8", "replace") != rec.exception_id:
        return Rejection(
            OUT_OF_RANGE, "exception_id", "the message key must be the record's exception_id"
        )
    return rec


#: fields whose plain equality an exception's match is indexed by (what `exceptions add`
#: --account, --org and --api-key write): an event then meets only the exceptions of its
#: own account, org or key, however many there are
INDEXED_FIELDS = ("account_id", "account.org_id", "api_key_id")


def _indexed_on(x: ExceptionRecord) -> tuple[str, str] | None:
    m = x.match
    if isinstance(m, dict) and len(m) == 2 and m.get("field") in INDEXED_FIELDS:
        value = m.get("equals")
        if type(value) is str:
            return m["field"], value
    return None


class _RuleExceptions:
    """The exceptions of one rule: by indexed field and value, and the others in order."""

    __slots__ = ("general", "keyed")

    def __init__(self, exceptions: Iterable[ExceptionRecord]) -> None:
        general: list[ExceptionRecord] = []
        keyed: dict[str, dict[str, list[ExceptionRecord]]] = {}
        for x in exceptions:
            on = _indexed_on(x)
            if on is None:
                general.append(x)
            else:
                keyed.setdefault(on[0], {}).setdefault(on[1], []).append(x)
        self.general = tuple(general)
        self.keyed = tuple(
            (FIELDS[name][0], {v: tuple(xs) for v, xs in table.items()})
            for name, table in keyed.items()
        )


class ExceptionSet:
    """The exceptions in force, compiled; `covers` answers per (rule, event). Immutable."""

    __slots__ = ("_by_rule", "_every_rule", "exceptions")

    def __init__(self, exceptions: Iterable[ExceptionRecord] = ()) -> None:
        ordered = tuple(sorted(exceptions, key=lambda x: x.exception_id))
        self.exceptions = ordered
        every = [x for x in ordered if x.rules == (ALL_RULES,)]
        self._every_rule = _RuleExceptions(every) if every else None
        named = {r for x in ordered for r in x.rules if r != ALL_RULES}
        self._by_rule = {r: _RuleExceptions(x for x in ordered if x.applies_to(r)) for r in named}

    def covers(self, rule_id: str, ee: EnrichedEvent) -> str | None:
        """The id of the exception that keeps this event from the rule, else None.

        When several do, the lowest id: the same one everywhere (hits are counted by id).
        """
        found = self._by_rule.get(rule_id, self._every_rule)
        if found is None:
            return None
        ts = ee.event.ts_ms
        best: str | None = None
        for x in found.general:
            if x.created_at_ms <= ts < x.expires_at_ms and x.predicate(ee):
                best = x.exception_id
                break  # in id order: no later general one is lower
        for get, table in found.keyed:
            for x in table.get(get(ee), ()):
                if x.created_at_ms <= ts < x.expires_at_ms:
                    if best is None or x.exception_id < best:
                        best = x.exception_id
                    break
        return best

    def active_at(self, now_ms: int) -> int:
        """How many are in force at this (wall-clock) time."""
        return sum(1 for x in self.exceptions if x.in_force_at(now_ms))

    def __len__(self) -> int:
        return len(self.exceptions)

    def __bool__(self) -> bool:
        return bool(self.exceptions)


NO_EXCEPTIONS = ExceptionSet()


class ExceptionsFileError(ValueError):
    """An invalid `--exceptions` file: one line naming the file, the line and the field."""


def load_exceptions(path: str, text: bytes) -> ExceptionSet:
    """JSON lines of exceptions (blank lines ignored; a later line replaces an earlier id)."""
    found: dict[str, ExceptionRecord] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = parse_exception_json(line)
        except ExceptionError as exc:
            raise ExceptionsFileError(f"{path}:{n}: {exc}") from None
        found[rec.exception_id] = rec
    return ExceptionSet(found.values())
