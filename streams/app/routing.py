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

from streams.core.classify import UNCLASSIFIED, EnrichedEvent
from streams.core.engine import RuleIndex, group_key
from streams.core.rules import RuleSet
from topics.accounts import AccountDirectory, AccountRecord
from topics.dlq import FUTURE_TIMESTAMP, INTERNAL_ERROR, DeadLetter, Rejection
from topics.formats import InputFormat
from topics.requests import (
    RejectedRecord,
    RequestEvent,
    accepted_ts,
    build_event,
    parse_request_record,
    record_text,
    request_records,
)
from topics.stage2 import envelope_bytes, forward_item, forward_messages

FUTURE_TOLERANCE_MS = 5 * 60_000
#: above every accepted ts (SPEC 2.1 bounds them): the limit of a worker in replay mode
NO_FUTURE_LIMIT = 2**63 - 1
#: the default bound of one message to the detect topic (its max.message.bytes is larger)
MAX_FORWARD_MESSAGE_BYTES = 512 * 1024
#: room left in a message for Kafka's record-batch framing, key and headers
MESSAGE_OVERHEAD_BYTES = 512
SCOPES = (("account_id", "a"), ("org_id", "o"))  # the order of streams.core.engine.SCOPE_ORDER


def destination(key: str, partitions: int) -> int:
    """Stage-2 partition of a group key (stable across processes and restarts)."""
    return zlib.crc32(key.encode()) % partitions


@dataclass(slots=True)
class Screened:
    """The first half of stage 1 for one message: everything that needs no account directory.

    Built by `Screen` in the worker or in a screening process (`streams.app.screening`),
    which sends it back as `to_wire()`.
    """

    #: why each rejected record was rejected, and its text as sent, in record order
    letters: list[tuple[Rejection, str]] = field(default_factory=list)
    malformed: int = 0
    rejected: int = 0
    error: int = 0
    #: account ids and event times (epoch ms) of the valid records that no rule's gate admits
    accounts: list[str] = field(default_factory=list)
    event_ts_ms: list[int] = field(default_factory=list)
    #: the valid records that some rule's gate admits, with their event times
    gated: list[tuple[dict[str, Any], int]] = field(default_factory=list)
    #: whether the message was a batch (`record_text` of a gated record needs it)
    batched: bool = False
    #: sha256 of the rules whose gates screened it: after a rules change, a message screened
    #: under the rules before is screened again (SPEC 4.3: a change falls between messages)
    rules_sha256: str = ""
    #: records that the input format declares not to be requests (SPEC 2.4)
    skipped: int = 0

    def to_wire(self) -> bytes:
        """One JSON array (orjson round-trips the decoded records exactly)."""
        return orjson.dumps(
            [
                self.malformed,
                self.rejected,
                self.error,
                [(r.reason, r.field, r.detail, text) for r, text in self.letters],
                self.accounts,
                self.event_ts_ms,
                self.gated,
                self.batched,
                self.rules_sha256,
                self.skipped,
            ]
        )

    @classmethod
    def from_wire(cls, data: bytes) -> Screened:
        """The inverse of `to_wire`."""
        (
            malformed,
            rejected,
            error,
            letters,
            accounts,
            event_ts_ms,
            gated,
            batched,
            sha,
            skipped,
        ) = orjson.loads(data)
        return cls(
            [(Rejection(reason, fld, detail), text) for reason, fld, detail, text in letters],
            malformed,
            rejected,
            error,
            accounts,
            event_ts_ms,
            [(rec, ts) for rec, ts in gated],
            batched,
            sha,
            skipped,
        )


class Screen:
    """Decode, validate, classify and gate the records of one message: pure, no directory."""

    def __init__(
        self, rules: RuleSet, input_format: InputFormat | None = None, check_future: bool = True
    ) -> None:
        """`input_format`: how to map input of another schema (None: frwatch's own).

        `check_future` false (FRWATCH_MODE=replay): no record is rejected for a ts ahead of
        the wall clock, since an archive's time is not the wall clock's (SPEC 2.3, 6).
        """
        self.input_format = input_format
        self.check_future = check_future
        self.index = RuleIndex(rules.rules)
        self.rules_sha256 = rules.sha256
        self.classification = rules.classification

    def screen(self, value: bytes | None, now_ms: int) -> Screened:
        """Every record of one `api.requests` message, validated on its own.

        The hot loop of the live worker: most records match no rule's gate, so they cost a
        validation and a gate lookup, nothing more.
        """
        out = Screened(rules_sha256=self.rules_sha256)
        letters = out.letters
        message = value if value is not None else b""
        mapping = self.input_format
        found = request_records(message) if mapping is None else mapping.request_records(message)
        if type(found) is RejectedRecord:
            out.malformed = 1
            letters.append((found.rejection, found.raw))
            return out
        if mapping is None:
            records, batched = found  # type: ignore[misc]
        else:
            records, batched, out.skipped = found  # type: ignore[misc]
        out.batched = batched
        future_limit = now_ms + FUTURE_TOLERANCE_MS if self.check_future else NO_FUTURE_LIMIT
        admitting = self.index.admitting
        gates = self.index.cached  # admitting's answers, looked up without a call
        classification = self.classification
        of_operation = classification.operations.get
        of_intent = classification.of_intent
        intent_labels = classification.intents  # the only labels whose intent classifies
        accounts = out.accounts.append
        event_ts = out.event_ts_ms.append
        gated_records = out.gated.append
        for rec in records:
            ts_ms = accepted_ts(rec) if type(rec) is dict else -1
            if ts_ms < 0:
                # the detailed validator names the reason (it agrees with accepted_ts)
                out.malformed += 1
                letters.append(
                    (parse_request_record(rec), record_text(rec, message, batched))  # type: ignore[arg-type]
                )
                continue
            if ts_ms > future_limit:
                out.rejected += 1
                ahead_s = (ts_ms - now_ms) / 1000
                rejection = Rejection(
                    FUTURE_TIMESTAMP, "ts", f"ts is {ahead_s:.0f}s ahead of the wall clock"
                )
                letters.append((rejection, record_text(rec, message, batched)))
                continue
            try:
                operation = rec["operation"]
                intent = rec.get("intent")
                label = None if intent is None else intent.get("label")
                verdict = of_operation(operation)
                if verdict is None:
                    verdict = (
                        of_intent(
                            operation,
                            rec.get("image_count") or 0,
                            rec.get("audio_count") or 0,
                            label,
                            intent.get("score"),
                        )
                        if label in intent_labels
                        else UNCLASSIFIED
                    )
                bio_kind, trait = verdict[0], verdict[1]
                gated = gates((bio_kind, trait, operation, label))
                if gated is None:
                    gated = admitting(bio_kind, trait, operation, label)
            except Exception as exc:  # a deterministic bug: dead-letter it, never skip silently
                out.error += 1
                letters.append((_internal_error(exc), record_text(rec, message, batched)))
                continue
            if gated:
                # only SPEC 2.1's fields travel on: whatever else a record carries (a field
                # nested deeper than orjson writes, say) never has to be serialised again
                gated_records((build_event(rec, ts_ms).to_wire(), ts_ms))
            else:
                accounts(rec["account_id"])
                event_ts(ts_ms)
        return out


@dataclass(slots=True)
class Routed:
    """What one input message turned into.

    `forward_messages` is what to send to the detect topic: (partition, value) pairs, each
    value a `{"items": [...]}` message below the router's `max_message_bytes`; the items of
    one partition are split over as many messages as that takes, in order. `forwards` (the
    same items as dicts, partition -> items) is kept for callers that serialise themselves;
    it does not bound sizes.
    """

    forwards: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    forward_messages: list[tuple[int, bytes]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    processed: int = 0
    malformed: int = 0
    rejected: int = 0
    error: int = 0
    skipped: int = 0
    hits: int = 0
    misses: int = 0
    #: event times (epoch ms) of the records counted in `hits`/`misses`, and the wall clock
    #: they were routed at: their lags, for the lag histogram
    event_ts_ms: list[int] = field(default_factory=list)
    now_ms: int = 0


class Router:
    """Validates and routes records; the same rules decide routing and detection."""

    def __init__(
        self,
        rules: RuleSet,
        directory: AccountDirectory,
        partitions: int,
        max_message_bytes: int = MAX_FORWARD_MESSAGE_BYTES,
        input_format: InputFormat | None = None,
        check_future: bool = True,
    ) -> None:
        """`max_message_bytes`: the detect topic's `max.message.bytes` (or less).

        Forward values stay `MESSAGE_OVERHEAD_BYTES` below it; a record whose forward alone
        would not fit is dead-lettered (`internal_error`) instead of sent.
        """
        if max_message_bytes <= MESSAGE_OVERHEAD_BYTES + 64:
            raise ValueError(f"max_message_bytes must exceed {MESSAGE_OVERHEAD_BYTES + 64}")
        self.directory = directory
        self.partitions = partitions
        self.max_value_bytes = max_message_bytes - MESSAGE_OVERHEAD_BYTES
        self.input_format = input_format
        self.check_future = check_future  # false in replay mode (Screen)
        self.set_rules(rules)

    def set_rules(self, rules: RuleSet) -> None:
        """Route by these rules from the next message on (SPEC 4.3)."""
        self.scoped = tuple(
            (tag, RuleIndex(tuple(r for r in rules.rules if r.group_by == scope)))
            for scope, tag in SCOPES
        )
        self.screen = Screen(rules, self.input_format, self.check_future)
        self.classification = rules.classification
        self.rules_sha256 = rules.sha256

    def route(
        self,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        kafka_ts_ms: int,
        now_ms: int,
    ) -> Routed:
        """Screen one message here, then route it (`route_screened`)."""
        return self.route_screened(
            self.screen.screen(value, now_ms), value, topic, partition, offset, kafka_ts_ms, now_ms
        )

    def route_screened(
        self,
        screened: Screened,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        kafka_ts_ms: int,
        now_ms: int,
    ) -> Routed:
        """The second half of stage 1: enrich the screened records and plan their forwards.

        `value` is the message that was screened; `screened`'s lists are taken over. A record
        that no gate admits costs one directory lookup (a hit or a miss); the few that some
        gate admits are built, enriched and matched.
        """
        out = Routed(
            dead_letters=[
                DeadLetter(rejection, text, topic, partition, offset)
                for rejection, text in screened.letters
            ],
            malformed=screened.malformed,
            rejected=screened.rejected,
            error=screened.error,
            skipped=screened.skipped,
            event_ts_ms=screened.event_ts_ms,
            now_ms=now_ms,
        )
        accounts = screened.accounts
        hits = sum(map(self.directory.known, accounts))
        misses = len(accounts) - hits
        event_ts = out.event_ts_ms
        forwarded = 0
        account_of = self.directory.get
        limit = self.max_value_bytes - envelope_bytes()
        serialized: dict[int, list[bytes]] = {}
        for rec, ts_ms in screened.gated:
            try:
                account = account_of(rec["account_id"])
                forwards = self._plan(rec, build_event(rec, ts_ms), account, kafka_ts_ms)
                values = [orjson.dumps(item) for _, item in forwards]
                too_big = max(map(len, values), default=0)
                if too_big > limit:
                    raise ForwardTooLarge(
                        f"its forward to the detect topic is {too_big} bytes, over the limit "
                        f"of {limit} bytes"
                    )
            except Exception as exc:  # a deterministic bug: dead-letter it, never skip silently
                out.error += 1
                out.dead_letters.append(
                    DeadLetter(
                        _internal_error(exc),
                        record_text(rec, value if value is not None else b"", screened.batched),
                        topic,
                        partition,
                        offset,
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
            for (dest, item), data in zip(forwards, values, strict=True):
                out.forwards.setdefault(dest, []).append(item)
                serialized.setdefault(dest, []).append(data)
        for dest, datas in serialized.items():
            out.forward_messages.extend(
                (dest, m) for m in forward_messages(datas, limit, self.rules_sha256)
            )
        routed = len(event_ts)
        out.hits, out.misses, out.processed = routed - misses, misses, routed - forwarded
        return out

    def _plan(
        self,
        event_wire: dict[str, Any],
        ev: RequestEvent,
        account: AccountRecord | None,
        kafka_ts_ms: int,
    ) -> list[tuple[int, dict[str, Any]]]:
        """Where the copies of a record that some rule may match go (empty: none matches).

        One copy per scope whose rules match (all rules of a scope share its group key), with
        the ids of the rules that matched, so that detect does not match them again
        (`topics.stage2`); `event_wire` is the record as `RequestEvent.to_wire` normalised it.
        """
        ee = EnrichedEvent(ev, account, self.classification)
        forwards: list[tuple[int, dict[str, Any]]] = []
        for tag, index in self.scoped:
            matched = [
                r for r in index.candidates(ee) if r.match(ee) and group_key(r, ee) is not None
            ]
            if not matched:
                continue
            gk = group_key(matched[0], ee)
            assert gk is not None
            item = forward_item(
                tag,
                event_wire,
                _account_wire(account),
                kafka_ts_ms,
                # the first copy counts the record in frwatch_events_total
                not forwards,
                [r.id for r in matched],
            )
            forwards.append((destination(gk, self.partitions), item))
        return forwards


class ForwardTooLarge(Exception):
    """A record's forward alone exceeds the detect topic's message size."""


def _account_wire(account: AccountRecord | None) -> dict[str, Any] | None:
    return account.to_wire() if account is not None else None


def _internal_error(exc: Exception) -> Rejection:
    return Rejection(INTERNAL_ERROR, None, f"{type(exc).__name__}: {exc}")
