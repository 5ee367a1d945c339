"""Stage 1 (ingest): validate, enrich and route each record to where its window state lives.

No Faust here: the agent in `streams.app.faust_app` feeds it raw messages and sends what it
returns. Records that match no rule end here; matching ones travel, batched per destination
partition, to stage 2 (`streams.app.detection`) with their account snapshot.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

from streams.core.classify import IDENTITY_INTENTS, NONE, OPERATION_KIND, EnrichedEvent, intent_kind
from streams.core.engine import RuleIndex, group_key
from streams.core.rules import RuleSet
from topics.accounts import AccountDirectory, AccountRecord
from topics.dlq import FUTURE_TIMESTAMP, INTERNAL_ERROR, DeadLetter, Rejection
from topics.requests import (
    RejectedRecord,
    RequestEvent,
    accepted_ts,
    build_event,
    parse_request_record,
    record_text,
    request_records,
)

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
    #: event times (epoch ms) of the records counted in `hits`/`misses`, and the wall clock
    #: they were routed at: their lags, for the lag histogram
    event_ts_ms: list[int] = field(default_factory=list)
    now_ms: int = 0


class Router:
    """Validates and routes records; the same rules decide routing and detection."""

    def __init__(self, rules: RuleSet, directory: AccountDirectory, partitions: int) -> None:
        self.directory = directory
        self.partitions = partitions
        self.scoped = tuple(
            (tag, RuleIndex(tuple(r for r in rules.rules if r.group_by == scope)))
            for scope, tag in SCOPES
        )
        self.index = RuleIndex(rules.rules)

    def route(
        self,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        kafka_ts_ms: int,
        now_ms: int,
    ) -> Routed:
        """Every record of one `api.requests` message, validated and counted on its own.

        The hot loop of the live worker: most records match no rule, so they cost a
        validation, an account lookup and a gate lookup, nothing more.
        """
        out = Routed(now_ms=now_ms)
        message = value if value is not None else b""
        found = request_records(message)
        if type(found) is RejectedRecord:
            out.malformed = 1
            out.dead_letters.append(
                DeadLetter(found.rejection, found.raw, topic, partition, offset)
            )
            return out
        records, batched = found  # type: ignore[misc]
        future_limit = now_ms + FUTURE_TOLERANCE_MS
        account_of = self.directory.get
        admitting = self.index.admitting
        gates = self.index.cached  # admitting's answers, looked up without a call
        kind_of_operation = OPERATION_KIND.get
        event_ts = out.event_ts_ms
        misses = forwarded = 0
        for rec in records:
            ts_ms = accepted_ts(rec) if type(rec) is dict else -1
            if ts_ms < 0:
                # the detailed validator names the reason (it agrees with accepted_ts)
                reason = parse_request_record(rec)
                out.malformed += 1
                out.dead_letters.append(
                    DeadLetter(
                        reason,  # type: ignore[arg-type]
                        record_text(rec, message, batched),
                        topic,
                        partition,
                        offset,
                    )
                )
                continue
            if ts_ms > future_limit:
                out.rejected += 1
                ahead_s = (ts_ms - now_ms) / 1000
                rejection = Rejection(
                    FUTURE_TIMESTAMP, "ts", f"ts is {ahead_s:.0f}s ahead of the wall clock"
                )
                out.dead_letters.append(
                    DeadLetter(
                        rejection, record_text(rec, message, batched), topic, partition, offset
                    )
                )
                continue
            try:
                operation = rec["operation"]
                intent = rec.get("intent")
                label = None if intent is None else intent.get("label")
                kind = kind_of_operation(operation)
                if kind is None:
                    kind = (
                        intent_kind(
                            operation, rec.get("image_count") or 0, label, intent.get("score")
                        )
                        if label in IDENTITY_INTENTS
                        else NONE
                    )
                account = account_of(rec["account_id"])
                gated = gates((kind, operation, label))
                if gated is None:
                    gated = admitting(kind, operation, label)
                forwards = (
                    self._plan(build_event(rec, ts_ms), account, kafka_ts_ms) if gated else ()
                )
            except Exception as exc:  # a deterministic bug: dead-letter it, never skip silently
                out.error += 1
                rejection = Rejection(INTERNAL_ERROR, None, f"{type(exc).__name__}: {exc}")
                out.dead_letters.append(
                    DeadLetter(
                        rejection, record_text(rec, message, batched), topic, partition, offset
                    )
                )
                continue
            # counted only once the record's whole plan exists: a record is never half-routed
            if account is None:
                misses += 1
            event_ts.append(ts_ms)
            if not forwards:
                continue
            forwarded += 1  # counted by stage 2
            for dest, item in forwards:
                out.forwards.setdefault(dest, []).append(item)
        routed = len(event_ts)
        out.hits, out.misses, out.processed = routed - misses, misses, routed - forwarded
        return out

    def _plan(
        self, ev: RequestEvent, account: AccountRecord | None, kafka_ts_ms: int
    ) -> list[tuple[int, dict[str, Any]]]:
        """Where the copies of a record that some rule may match go (empty: none matches)."""
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
        return forwards


def _account_wire(account: AccountRecord | None) -> dict[str, Any] | None:
    return account.to_wire() if account is not None else None
