"""Stage 1 (ingest): validate, enrich and route each record to where its window state lives.

No Faust here: the agent in `streams.app.faust_app` feeds it raw messages and sends what it
returns. Records that match no rule end here; matching ones travel, batched per destination
partition, to stage 2 (`streams.app.detection`) with their account snapshot.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.core.classify import EnrichedEvent
from streams.core.engine import RuleIndex, group_key
from streams.core.rules import RuleSet
from topics.accounts import AccountDirectory, AccountRecord
from topics.dlq import FUTURE_TIMESTAMP, INTERNAL_ERROR, DeadLetter, Rejection, raw_text
from topics.requests import RejectedRecord, RequestEvent, decode_request_message, is_batch

FUTURE_TOLERANCE_MS = 5 * 60_000
SCOPES = (("account_id", "a"), ("org_id", "o"))  # the order of streams.core.engine.SCOPE_ORDER


def destination(key: str, partitions: int) -> int:
    """Stage-2 partition of a group key (stable across processes and restarts)."""
    return zlib.crc32(key.encode()) % partitions


@dataclass(slots=True)
class Routed:
    """What one input message turned into."""

    forwards: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    processed: int = 0
    malformed: int = 0
    rejected: int = 0
    error: int = 0
    hits: int = 0
    misses: int = 0
    lags_s: list[float] = field(default_factory=list)


class Router:
    """Validates and routes records; the same rules decide routing and detection."""

    def __init__(self, rules: RuleSet, directory: AccountDirectory, partitions: int) -> None:
        self.directory = directory
        self.partitions = partitions
        self.scoped = tuple(
            (tag, RuleIndex(tuple(r for r in rules.rules if r.group_by == scope)))
            for scope, tag in SCOPES
        )

    def route(
        self,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        kafka_ts_ms: int,
        now_ms: int,
    ) -> Routed:
        """Every record of one `api.requests` message, validated and counted on its own."""
        out = Routed()
        records = decode_request_message(value if value is not None else b"")
        for i, rec in enumerate(records):
            if type(rec) is RejectedRecord:
                out.malformed += 1
                out.dead_letters.append(
                    DeadLetter(rec.rejection, rec.raw, topic, partition, offset)
                )
                continue
            ev: RequestEvent = rec  # type: ignore[assignment]
            if ev.ts_ms > now_ms + FUTURE_TOLERANCE_MS:
                out.rejected += 1
                ahead_s = (ev.ts_ms - now_ms) / 1000
                rejection = Rejection(
                    FUTURE_TIMESTAMP, "ts", f"ts is {ahead_s:.0f}s ahead of the wall clock"
                )
                out.dead_letters.append(
                    DeadLetter(rejection, record_text(value, i), topic, partition, offset)
                )
                continue
            try:
                account, forwards = self._plan(ev, kafka_ts_ms)
            except Exception as exc:  # a deterministic bug: dead-letter it, never skip silently
                out.error += 1
                rejection = Rejection(INTERNAL_ERROR, None, f"{type(exc).__name__}: {exc}")
                out.dead_letters.append(
                    DeadLetter(rejection, record_text(value, i), topic, partition, offset)
                )
                continue
            # counted only once the record's whole plan exists: a record is never half-routed
            if account is None:
                out.misses += 1
            else:
                out.hits += 1
            out.lags_s.append(max(0.0, (now_ms - ev.ts_ms) / 1000))
            if not forwards:
                out.processed += 1
            for dest, item in forwards:
                out.forwards.setdefault(dest, []).append(item)
        return out

    def _plan(
        self, ev: RequestEvent, kafka_ts_ms: int
    ) -> tuple[AccountRecord | None, list[tuple[int, dict[str, Any]]]]:
        """The record's account and where its copies go (empty: no rule can match it)."""
        account = self.directory.get(ev.account_id)
        ee = EnrichedEvent(ev, account)
        forwards: list[tuple[int, dict[str, Any]]] = []
        for tag, index in self.scoped:
            keys = {
                gk
                for r in index.candidates(ee)
                if r.match(ee) and (gk := group_key(r, ee)) is not None
            }
            for gk in keys:
                item = {
                    "s": tag,
                    "e": ev.to_wire(),
                    "a": _account_wire(account),
                    "k": kafka_ts_ms,
                    # the first copy counts the record in frwatch_events_total
                    "c": 0 if forwards else 1,
                }
                forwards.append((destination(gk, self.partitions), item))
        return account, forwards


def record_text(value: bytes | None, index: int) -> str:
    """The record at `index` of a message as it was sent: the message, or its batch entry."""
    text = raw_text(value)
    try:
        obj = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return text
    if type(obj) is dict and is_batch(obj) and type(obj["records"]) is list:
        try:
            return orjson.dumps(obj["records"][index]).decode()
        except (IndexError, orjson.JSONEncodeError):
            return text
    return text


def _account_wire(account: AccountRecord | None) -> dict[str, Any] | None:
    return account.to_wire() if account is not None else None
