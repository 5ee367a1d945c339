"""Exceptions in the detector (SPEC 4.4): covered events are not counted by the listed rules."""

from __future__ import annotations

from typing import Any

from streams.core.classify import EnrichedEvent
from streams.core.engine import Detector
from streams.core.exceptions import ExceptionsInForce
from streams.core.rules import builtin_classification, load_rules
from streams.core.state import MemoryWindowStore
from topics.accounts import AccountRecord
from topics.alerts import Alert
from topics.exceptions import ExceptionSet, parse_exception
from topics.requests import RequestEvent, parse_request_record
from topics.timestamps import format_ms, parse_rfc3339_ms

HOUR = 3_600_000
T0 = parse_rfc3339_ms("2026-11-18T07:00:00Z")
# two organisations, each with an account that an exception approves and one it does not
ACCOUNTS = {
    a.account_id: a
    for a in (
        AccountRecord("acct-approved", org_id="org-a", sector="commercial", country="NL"),
        AccountRecord("acct-other", org_id="org-a", sector="commercial", country="NL"),
        AccountRecord("acct-approved-b", org_id="org-b", sector="commercial", country="NL"),
        AccountRecord("acct-busy", org_id="org-b", sector="commercial", country="NL"),
        AccountRecord("acct-police", org_id="org-p", sector="law_enforcement", country="US"),
    )
}


def exception(
    exception_id: str, match: Any, rules: list[str], start: int = T0 - HOUR, days: int = 30
) -> Any:
    return parse_exception(
        {
            "exception_id": exception_id,
            "rules": rules,
            "match": match,
            "reason": "approved",
            "owner": "soc",
            "created_at": format_ms(start),
            "expires_at": format_ms(start + days * 86_400_000),
        }
    )


def for_account(account_id: str, exception_id: str = "EX-1", **kw: Any) -> Any:
    return exception(exception_id, {"field": "account_id", "equals": account_id}, **kw)


class Harness:
    def __init__(self, *exceptions: Any) -> None:
        self.in_force = ExceptionsInForce(ExceptionSet(exceptions))
        self.detector = Detector(load_rules(), MemoryWindowStore(), exceptions=self.in_force)
        self.alerts: list[Alert] = []
        self.matched: list[str] = []
        self.n = 0

    def feed(self, account_id: str, ts: int, op: str = "face.identify", **extra: Any) -> None:
        self.n += 1
        raw = {"event_id": f"e{self.n}", "ts": ts, "account_id": account_id, "operation": op}
        ev = parse_request_record({**raw, **extra})
        assert isinstance(ev, RequestEvent)
        obs = self.detector.observe(
            EnrichedEvent(ev, ACCOUNTS.get(account_id), builtin_classification())
        )
        self.alerts.extend(obs.alerts)
        self.matched.extend(obs.matched)

    def searches(self, account_id: str, subjects: range, ts: int = T0) -> None:
        for s in subjects:
            self.feed(account_id, ts + s, subject_ids=[f"subj-{s}"])

    def fired(self) -> list[tuple[str, str]]:
        return [(a.rule_id, a.group_key) for a in self.alerts]


def test_fr006_an_org_whose_approved_account_is_excepted_does_not_fire() -> None:
    # org-a: 40 subjects from the approved account, 20 from the other: 60 >= 50 without it
    unexcepted = Harness()
    unexcepted.searches("acct-approved", range(40))
    unexcepted.searches("acct-other", range(40, 60))
    assert unexcepted.fired() == [("FR-006", "org-a")]

    h = Harness(for_account("acct-approved", rules=["FR-006"]))
    h.searches("acct-approved", range(40))
    h.searches("acct-other", range(40, 60))
    assert h.fired() == []
    assert h.in_force.hits == {"EX-1": 40}
    assert h.matched.count("FR-006") == 20  # covered events are no match of the rule


def test_fr006_an_org_that_crosses_50_without_the_excepted_account_fires() -> None:
    h = Harness(for_account("acct-approved-b", rules=["FR-006"]))
    h.searches("acct-approved-b", range(40))
    h.searches("acct-busy", range(100, 160))
    assert h.fired() == [("FR-006", "org-b")]
    (alert,) = h.alerts
    # counted without the excepted account: it fired at the 50th subject of acct-busy
    assert alert.count == 50 and alert.distinct == 50
    assert {s["event_id"] for s in alert.samples} <= {f"e{n}" for n in range(41, 101)}


def test_an_exception_covers_only_the_rules_it_lists() -> None:
    h = Harness(for_account("acct-police", rules=["FR-001"]))
    h.feed("acct-police", T0, capture={"device": "body_camera", "setting": "in_the_wild"})
    assert h.fired() == [("FR-002", "acct-police")]
    assert "FR-001" not in h.matched


def test_star_covers_every_rule() -> None:
    capture = {"device": "body_camera", "setting": "in_the_wild"}
    plain = Harness()
    plain.feed("acct-police", T0, capture=capture)
    assert {"FR-001", "FR-002", "FR-006"} <= set(plain.matched)
    h = Harness(for_account("acct-police", rules=["*"]))
    h.feed("acct-police", T0, capture=capture)
    assert h.fired() == [] and h.matched == []
    assert h.in_force.hits == {"EX-1": len(plain.matched)}  # one hit per rule kept from


def test_validity_is_event_time_at_both_edges() -> None:
    start = T0
    x = for_account("acct-police", rules=["FR-001"], start=start, days=1)
    h = Harness(x)
    end = x.expires_at_ms
    for ts in (start - 1, start, end - 1, end):
        h.feed("acct-police", ts)
    # start - 1 (the hour before) and end (a later hour) fire; start and end - 1 are covered
    assert sorted(a.window_start_ms for a in h.alerts) == [start - HOUR, end]
    assert h.in_force.hits == {"EX-1": 2}


def test_an_expired_exception_stops_applying() -> None:
    h = Harness(for_account("acct-police", rules=["FR-001"], start=T0 - 2 * HOUR, days=1))
    h.feed("acct-police", T0)
    assert h.fired() == []
    h.feed("acct-police", T0 + 2 * 86_400_000)  # past expires_at by event time
    assert h.fired() == [("FR-001", "acct-police")]


def test_a_removed_exception_stops_applying_and_a_covered_event_started_no_window() -> None:
    h = Harness(for_account("acct-police", rules=["FR-001"]))
    h.feed("acct-police", T0)
    assert h.fired() == []
    h.in_force.replace(ExceptionSet())  # the tombstone
    h.feed("acct-police", T0 + 1)
    (alert,) = h.alerts
    assert alert.count == 1  # the covered event was never counted in the window
    assert h.in_force.hits == {"EX-1": 1}  # hits stay: a counter


def test_no_exceptions_changes_nothing() -> None:
    plain, empty = Harness(), Harness()
    for h in (plain, empty):
        h.searches("acct-other", range(60))
    assert plain.fired() == empty.fired() == [("FR-006", "org-a")]
    assert not empty.in_force.hits
