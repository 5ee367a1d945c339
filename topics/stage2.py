"""Stage-2 messages: the contract between ingest and detect on the `<app>-detect` topic.

The topic is persisted (a worker upgraded mid-stream reads what the one before wrote), so
both kinds of message are versioned, and a reader refuses a version it does not know with a
message that says so instead of guessing.

- **Forwards** (`ForwardMessage`): `{"items": [item, ...], "v": 1, "rules": sha256}`. An item
  is `{"s": scope, "e": event, "a": account, "k": kafka_ts_ms, "c": 0|1, "r": [rule ids]}`:
  the scope of the rules it is for (`a` account_id rules, `o` org_id rules), the event as
  `RequestEvent.to_wire` normalised it, the account snapshot ingest enriched it with (null:
  unknown), the Kafka timestamp of the input message (for the alert latency), whether this
  copy counts the record in `frwatch_events_total` (the first copy of a record does), and the
  ids of the rules of that scope that matched at ingest under the rules `rules` (the sha256
  of the rules file). A message without `"v"` is version 0 (before this contract): the same
  items without `r`.
- **Watermarks** (`Watermark`): `{"v": 1, "n": inputs, "wm": [[partition, ms, idle], ...]}`,
  each input partition's highest valid event time and whether it is idle (SPEC 4.1).

Ingest validates each record once (SPEC 2.1) and classifies and matches it once; detect
trusts both. `decode_forward` checks only the shape of an item (types of the fields it
reads), so a foreign or corrupt item fails as that item alone, with a reason, never as a
wrong count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import orjson

from topics.accounts import AccountRecord
from topics.requests import RequestEvent, build_event

FORWARD_VERSION = 1
WATERMARK_VERSION = 1
SCOPE_TAGS = frozenset({"a", "o"})

_FORWARDS_HEAD = b'{"items":['


class Stage2Error(ValueError):
    """A stage-2 message or item that this version of frwatch cannot read."""


class Forward(NamedTuple):
    """One routed copy of a record, for the rules of one scope."""

    scope: str
    event: RequestEvent
    account: AccountRecord | None
    kafka_ts_ms: int
    counts: bool
    #: the rules of `scope` that matched at ingest; None: not known (match again)
    rule_ids: tuple[str, ...] | None


class ForwardMessage(NamedTuple):
    """A decoded forwards message: its items still raw, so that each fails on its own."""

    version: int
    rules_sha256: str | None
    items: list[Any]


class Watermark(NamedTuple):
    """Progress of every input partition an ingest reads, for every detect partition."""

    inputs: int
    marks: tuple[tuple[int, int, bool], ...]

    def to_wire(self) -> bytes:
        """The record as sent."""
        return orjson.dumps(
            {"v": WATERMARK_VERSION, "n": self.inputs, "wm": [list(m) for m in self.marks]}
        )

    @classmethod
    def from_wire(cls, value: bytes) -> Watermark:
        """Decode a watermark record; Stage2Error for another version or shape."""
        try:
            msg = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise Stage2Error(f"watermark record is not JSON: {exc}") from None
        if not isinstance(msg, dict) or msg.get("v") != WATERMARK_VERSION:
            got = msg.get("v") if isinstance(msg, dict) else type(msg).__name__
            raise Stage2Error(
                f"watermark record of version {got!r}; this worker reads {WATERMARK_VERSION}"
            )
        inputs, marks = msg.get("n"), msg.get("wm")
        if type(inputs) is not int or inputs < 0 or not isinstance(marks, list):
            raise Stage2Error("watermark record needs an integer n and a list wm")
        out = []
        for m in marks:
            if (
                not isinstance(m, list)
                or len(m) != 3
                or type(m[0]) is not int
                or type(m[1]) is not int
                or type(m[2]) is not bool
            ):
                raise Stage2Error(f"watermark entry {m!r} is not [partition, ms, idle]")
            out.append((m[0], m[1], m[2]))
        return cls(inputs, tuple(out))


def watermark_message(inputs: int, marks: Iterable[tuple[int, int, bool]]) -> bytes:
    """A watermark record: per input partition, its highest valid event time and whether it
    is idle (SPEC 4.1); `inputs` is the number of input partitions."""
    return Watermark(inputs, tuple(marks)).to_wire()


def is_forwards(value: bytes) -> bool:
    """Whether a stage-2 message carries forwards (else it is a watermark record)."""
    return value.startswith(_FORWARDS_HEAD)


def forward_item(
    scope: str,
    event_wire: dict[str, Any],
    account_wire: dict[str, Any] | None,
    kafka_ts_ms: int,
    counts: bool,
    rule_ids: Sequence[str],
) -> dict[str, Any]:
    """One item as JSON-able data (serialised by the router, which bounds message sizes)."""
    return {
        "s": scope,
        "e": event_wire,
        "a": account_wire,
        "k": kafka_ts_ms,
        "c": 1 if counts else 0,
        "r": list(rule_ids),
    }


def forward_messages(items: Iterable[bytes], limit: int, rules_sha256: str) -> list[bytes]:
    """Forwards messages holding `items` in order, each at most `limit` + `envelope_bytes`."""
    tail = b'],"v":%d,"rules":"%s"}' % (FORWARD_VERSION, rules_sha256.encode())
    messages: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for data in items:
        # each item after the first costs a comma
        if chunk and size + 1 + len(data) > limit:
            messages.append(_FORWARDS_HEAD + b",".join(chunk) + tail)
            chunk, size = [], 0
        size += len(data) + (1 if chunk else 0)
        chunk.append(data)
    if chunk:
        messages.append(_FORWARDS_HEAD + b",".join(chunk) + tail)
    return messages


def envelope_bytes() -> int:
    """What a forwards message adds to its items (the rules sha256 is 64 characters)."""
    return len(_FORWARDS_HEAD) + len(b'],"v":%d,"rules":""}' % FORWARD_VERSION) + 64


def decode_forwards(value: bytes) -> ForwardMessage:
    """The envelope of a forwards message; Stage2Error for another version or shape."""
    try:
        msg = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise Stage2Error(f"forwards message is not JSON: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("items"), list):
        raise Stage2Error("forwards message needs a list of items")
    version = msg.get("v", 0)
    if version not in (0, FORWARD_VERSION):
        raise Stage2Error(
            f"forwards message of version {version!r}; this worker reads up to {FORWARD_VERSION}"
        )
    sha = msg.get("rules")
    return ForwardMessage(version, sha if isinstance(sha, str) else None, msg["items"])


def decode_forward(item: Any) -> Forward:
    """One item of a forwards message, trusting what ingest validated (SPEC 2.1).

    Only the types of what detect reads are checked: a record is validated once, at ingest.
    """
    if not isinstance(item, dict):
        raise Stage2Error(f"forward item must be an object, got {type(item).__name__}")
    scope, e, a, k, c = (item.get(f) for f in ("s", "e", "a", "k", "c"))
    if scope not in SCOPE_TAGS:
        raise Stage2Error(f"forward item has scope {scope!r}, not one of a, o")
    if (
        not isinstance(e, dict)
        or type(e.get("ts")) is not int
        or type(e.get("event_id")) is not str
        or type(e.get("account_id")) is not str
        or type(e.get("operation")) is not str
    ):
        raise Stage2Error("forward item's event lacks event_id, ts, account_id or operation")
    if type(k) is not int or c not in (0, 1):
        raise Stage2Error("forward item needs an integer k and c of 0 or 1")
    r = item.get("r")
    if r is not None and (not isinstance(r, list) or not all(type(x) is str for x in r)):
        raise Stage2Error("forward item's r must be a list of rule ids")
    try:
        account = AccountRecord.from_wire(a) if a is not None else None
        event = build_event(e, e["ts"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise Stage2Error(f"forward item is not of this version's shape: {exc!r}") from None
    return Forward(scope, event, account, k, c == 1, tuple(r) if r is not None else None)
