"""Beyond exact counting (SPEC 5): past 100,000 ids or values in one window, HLL sketches
(Apache DataSketches) estimate count and distinct within 2%, and the alert says so."""

from __future__ import annotations

from streams.core.classify import EnrichedEvent
from streams.core.engine import Detector
from streams.core.rules import builtin_classification, load_rules
from streams.core.state import MAX_EXACT, MemoryWindowStore
from topics.accounts import AccountRecord
from topics.requests import RequestEvent, parse_request_record
from topics.timestamps import parse_rfc3339_ms

T0 = parse_rfc3339_ms("2026-11-18T07:00:00Z")
LE = AccountRecord("acct-le", org_id="org-le", sector="law_enforcement", country="US")
SHOP = AccountRecord("acct-shop", org_id="org-shop", sector="commercial", country="US")
N = 150_000


def event(raw: dict[str, object], account: AccountRecord) -> EnrichedEvent:
    ev = parse_request_record(raw)
    assert isinstance(ev, RequestEvent), ev
    return EnrichedEvent(ev, account, builtin_classification())


def test_count_and_distinct_beyond_100000_are_estimated_within_2_percent() -> None:
    det = Detector(load_rules(), MemoryWindowStore())
    updates = []
    for i in range(N):
        obs = det.observe(
            event(
                {
                    "event_id": f"le-{i}",
                    "ts": T0 + i,
                    "account_id": "acct-le",
                    "operation": "face.verify",
                },
                LE,
            )
        )
        updates.extend(obs.updates)
        obs = det.observe(
            event(
                {
                    "event_id": f"id-{i}",
                    "ts": T0 + i,
                    "account_id": "acct-shop",
                    "operation": "face.identify",
                    "subject_ids": [f"subj-{i}"],
                },
                SHOP,
            )
        )
        updates.extend(obs.updates)
    # a redelivery of an early event is still recognised exactly
    again = det.observe(
        event(
            {"event_id": "le-7", "ts": T0 + 7, "account_id": "acct-le", "operation": "face.verify"},
            LE,
        )
    )
    assert again.duplicate
    closed = {a.rule_id: a for a in det.close_all()}
    fr1, fr6 = closed["FR-001"], closed["FR-006"]
    count_error = abs(fr1.count - N) / N
    distinct_error = abs((fr6.distinct or 0) - N) / N
    print(f"\nHLL at {N:,}: count error {count_error:.3%}, distinct error {distinct_error:.3%}")
    assert fr1.estimated and fr6.estimated
    assert count_error < 0.02 and distinct_error < 0.02
    # and the updates before the estimates were exact
    assert [a.count for a in updates if a.rule_id == "FR-001"] == [10, 100, 1_000, 10_000, 100_000]
    assert [a.estimated for a in updates if a.rule_id == "FR-001"] == [False] * 4 + [False]
    assert MAX_EXACT == 100_000
