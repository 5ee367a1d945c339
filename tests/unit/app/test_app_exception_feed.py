"""The worker's exceptions feed and metrics (SPEC 4.4, 7), without a broker."""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import ConsumerRecord
from prometheus_client import CollectorRegistry, generate_latest

from streams.app.exception_feed import ExceptionFeed, ExceptionMetrics
from streams.core.classify import EnrichedEvent
from streams.core.exceptions import ExceptionsInForce
from streams.core.rules import builtin_classification
from topics.accounts import AccountRecord
from topics.requests import RequestEvent, parse_request_record
from topics.timestamps import format_ms, parse_rfc3339_ms

T0 = parse_rfc3339_ms("2026-11-18T07:00:00Z")
DAY = 86_400_000


def value(exception_id: str, account: str = "acct-1", **changes: Any) -> bytes:
    rec = {
        "exception_id": exception_id,
        "rules": ["FR-001"],
        "match": {"field": "account_id", "equals": account},
        "reason": "pilot",
        "owner": "soc",
        "ticket": None,
        "created_at": format_ms(T0),
        "expires_at": format_ms(T0 + DAY),
    }
    return orjson.dumps({**rec, **changes})


def record(key: str, data: bytes | None, offset: int = 0) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        "frwatch.exceptions", 0, offset, 0, 0, key.encode(), data, None, 0,
        len(data or b""), [],  # type: ignore[arg-type]
    )  # fmt: skip


def event(account: str, ts: int = T0 + 1) -> EnrichedEvent:
    ev = parse_request_record(
        {"event_id": "e", "ts": ts, "account_id": account, "operation": "face.identify"}
    )
    assert isinstance(ev, RequestEvent)
    return EnrichedEvent(ev, AccountRecord(account), builtin_classification())


def test_the_feed_applies_records_and_tombstones_and_skips_rejected_ones() -> None:
    in_force = ExceptionsInForce()
    feed = ExceptionFeed(["127.0.0.1:1"], "frwatch.exceptions", in_force)
    feed.apply(record("EX-1", value("EX-1")))
    feed.apply(record("EX-2", value("EX-2", "acct-2")))
    feed.apply(record("EX-bad", value("EX-bad", "acct-3", owner="")))  # not applied
    assert not in_force.covers("FR-001", event("acct-1"))  # nothing before the catch-up ends
    feed.applied()
    assert in_force.covers("FR-001", event("acct-1"))
    assert in_force.covers("FR-001", event("acct-2"))
    assert not in_force.covers("FR-001", event("acct-3"))
    assert feed.rejected == 1
    feed.ready.set()
    # an invalid update of a known id leaves it as it was; a tombstone removes it
    feed.apply(record("EX-1", value("EX-1", expires_at=format_ms(T0 + 400 * DAY))))
    feed.apply(record("EX-2", None))
    feed.apply(record("EX-unknown", None))
    feed.applied()
    assert in_force.covers("FR-001", event("acct-1"))
    assert not in_force.covers("FR-001", event("acct-2"))
    assert [x.exception_id for x in in_force.current.exceptions] == ["EX-1"]
    assert in_force.hits == {"EX-1": 2, "EX-2": 1}


def test_metrics_serve_hits_and_the_exceptions_active_now() -> None:
    in_force = ExceptionsInForce()
    feed = ExceptionFeed(["127.0.0.1:1"], "frwatch.exceptions", in_force)
    feed.apply(record("EX-1", value("EX-1")))
    feed.apply(record("EX-old", value("EX-old", created_at=format_ms(T0 - 9 * DAY),
                                      expires_at=format_ms(T0 - DAY))))  # fmt: skip
    feed.applied()
    registry = CollectorRegistry()
    now = [T0 + 5]
    ExceptionMetrics(registry, in_force, lambda: now[0])
    text = generate_latest(registry).decode()
    assert 'frwatch_exception_hits_total{exception_id="EX-1"} 0.0' in text
    assert "frwatch_exceptions_active 1.0" in text
    in_force.covers("FR-001", event("acct-1"))
    feed.apply(record("EX-1", None))  # removed: its hits stay (a counter never goes down)
    feed.applied()
    now[0] = T0 + 2 * DAY
    text = generate_latest(registry).decode()
    assert 'frwatch_exception_hits_total{exception_id="EX-1"} 1.0' in text
    assert "frwatch_exceptions_active 0.0" in text
    filtered = generate_latest(
        registry.restricted_registry(["frwatch_exception_hits_total"])
    ).decode()
    assert 'exception_id="EX-1"' in filtered and "frwatch_exceptions_active" not in filtered
