"""The detector (SPEC 4.1, 5): requirements, firing once, alert ids, redeliveries, bounded state, expiry."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from streams.core import engine
from streams.core.classify import EnrichedEvent
from streams.core.engine import NOTHING, Detector, evidence_sample
from streams.core.rules import builtin_classification, load_rules, parse_rules
from streams.core.state import MemoryWindowStore, WindowState, id_hash, window_key
from topics.accounts import AccountRecord
from topics.alerts import SAMPLE_FIELDS, Alert, alert_id
from topics.requests import RequestEvent, parse_request_record
from topics.timestamps import parse_rfc3339_ms
from topics.window_state import WindowValue

HOUR = 3_600_000
DAY = 86_400_000
T0 = parse_rfc3339_ms("2026-11-18T07:00:00Z")
DAY0 = parse_rfc3339_ms("2026-11-18T00:00:00Z")

ACCOUNTS = {
    a.account_id: a
    for a in (
        AccountRecord("acct-le", org_id="org-le", sector="law_enforcement", country="US"),
        AccountRecord("acct-vision", org_id="org-vision", sector="commercial", country="FR"),
        AccountRecord("acct-east", org_id="org-retail", sector="commercial", country="US"),
        AccountRecord("acct-west", org_id="org-retail", sector="commercial", country="US"),
        AccountRecord("acct-gallery", org_id="org-gallery", sector="commercial", country="NL"),
        AccountRecord(
            "acct-kyc", org_id="org-kyc", sector="commercial", approved_uses=("identification",)
        ),
    )
}


class Harness:
    """A detector over the built-in rules with a memory store, fed raw event dicts."""

    def __init__(self, rules: Any = None) -> None:
        self.store = MemoryWindowStore()
        self.detector = Detector(rules or load_rules(), self.store)
        self.alerts: list[Alert] = []

    def feed(self, account_id: str = "acct-le", op: str = "face.identify", **fields: Any) -> Any:
        raw: dict[str, Any] = {"account_id": account_id, "operation": op}
        raw.setdefault("event_id", f"ev-{len(self.store)}-{id(raw)}")
        raw.update(fields)
        ev = parse_request_record(raw)
        assert isinstance(ev, RequestEvent), ev
        obs = self.detector.observe(
            EnrichedEvent(ev, ACCOUNTS.get(ev.account_id), builtin_classification())
        )
        self.alerts.extend(obs.alerts)
        self.detector.expire()
        return obs

    def state(self, rule_id: str, group: str, start: int) -> WindowState | None:
        rule = self.detector.rule_set.by_id(rule_id)
        return self.store.get(
            window_key(rule_id, rule.state_version, start, start + rule.window_ms, group)
        )

    def fired(self) -> list[tuple[str, str, int]]:
        return [(a.rule_id, a.group_key, a.window_start_ms) for a in self.alerts]


def llm(h: Harness, eid: str, ts: int, **extra: Any) -> Any:
    fields: dict[str, Any] = {
        "event_id": eid,
        "ts": ts,
        "image_count": 1,
        "intent": {"label": "identify_person", "score": 0.9},
    }
    fields.update(extra)
    return h.feed("acct-vision", "chat.completions", **fields)


def identify(h: Harness, eid: str, ts: int, subjects: list[str], acct: str = "acct-east") -> Any:
    return h.feed(acct, "face.identify", event_id=eid, ts=ts, subject_ids=subjects)


def enroll(h: Harness, eid: str, ts: int, acct: str = "acct-gallery") -> Any:
    return h.feed(acct, "person_group.add_face", event_id=eid, ts=ts)


# ----------------------------------------------------------------------------- requirements


def test_count_requirement_fires_on_the_event_that_reaches_it() -> None:
    h = Harness()
    assert llm(h, "a", T0 + 1).alerts == []
    assert llm(h, "b", T0 + 2).alerts == []
    obs = llm(h, "c", T0 + 3)
    assert [a.rule_id for a in obs.alerts] == ["FR-005"]
    alert = obs.alerts[0]
    assert (alert.count, alert.distinct) == (3, None)
    assert alert.window_start_ms == T0
    assert alert.window_end_ms == T0 + HOUR
    assert [s["event_id"] for s in alert.samples] == ["a", "b", "c"]


def test_distinct_requirement_counts_values_not_events() -> None:
    h = Harness()
    for i in range(30):
        identify(h, f"same-{i}", T0 + i, ["subj-0"])
    for i in range(1, 49):
        identify(h, f"e-{i}", T0 + 100 + i, [f"subj-{i}"], acct="acct-west")
    assert h.alerts == []
    # one event carrying three new subjects takes distinct from 49 to 50 (and past it)
    obs = identify(h, "last", T0 + 500, ["subj-49", "subj-50", "subj-51"])
    (alert,) = obs.alerts
    assert (alert.rule_id, alert.group_key, alert.group_by) == ("FR-006", "org-retail", "org_id")
    assert alert.distinct == 52  # every distinct value counts, past the threshold too
    assert alert.count == 30 + 48 + 1
    assert alert.account["account_id"] == "acct-east"  # the firing event's account
    assert len(alert.samples) == 10


def test_subject_ids_of_an_approved_account_do_not_count() -> None:
    h = Harness()
    for i in range(60):
        identify(h, f"k-{i}", T0 + i, [f"s-{i}"], acct="acct-kyc")
    assert h.alerts == []
    assert h.state("FR-006", "org-kyc", T0) is None


def test_every_requirement_must_hold_in_one_window() -> None:
    h = Harness()
    for i in range(25):
        enroll(h, f"en-{i}", DAY0 + i * 60_000)
    assert h.alerts == []
    obs = h.feed("acct-gallery", "face.identify", event_id="idn", ts=DAY0 + 23 * HOUR)
    (alert,) = obs.alerts
    assert (alert.rule_id, alert.window_start_ms, alert.window_end_ms) == (
        "FR-007",
        DAY0,
        DAY0 + DAY,
    )
    assert alert.distinct is None
    assert alert.count >= 21


def test_observed_count_when_requirements_are_met_exactly() -> None:
    h = Harness()
    h.feed("acct-gallery", "face.identify", event_id="idn", ts=DAY0 + 5)
    for i in range(20):
        obs = enroll(h, f"en-{i}", DAY0 + 10 + i)
    (alert,) = obs.alerts
    assert (alert.count, alert.distinct) == (21, None)


# ----------------------------------------------------------------------------- firing


def test_a_window_fires_at_most_once() -> None:
    h = Harness()
    for i in range(10):
        h.feed(event_id=f"e{i}", ts=T0 + i * 60_000)
    for i in range(6):
        llm(h, f"l{i}", T0 + i)
    assert sorted(h.fired()) == [("FR-001", "acct-le", T0), ("FR-005", "acct-vision", T0)]


def test_each_window_fires_on_its_own() -> None:
    h = Harness()
    for hour in range(3):
        h.feed(event_id=f"e{hour}", ts=T0 + hour * HOUR + 59 * 60_000)
    assert h.fired() == [("FR-001", "acct-le", T0 + k * HOUR) for k in range(3)]


def test_alert_id_formula() -> None:
    expected = hashlib.sha256(b"FR-001|acct-le|1794985200000").hexdigest()[:32]
    assert alert_id("FR-001", "acct-le", 1_794_985_200_000) == expected
    assert len(expected) == 32
    assert int(expected, 16) >= 0
    h = Harness()
    (alert,) = h.feed(event_id="e", ts=T0 + 5).alerts
    assert alert.alert_id == hashlib.sha256(f"FR-001|acct-le|{T0}".encode()).hexdigest()[:32]


def test_alert_id_of_a_group_key_with_separators_and_unicode() -> None:
    h = Harness()
    obs = h.feed("acct|ünï|1", "face.verify", event_id="e", ts=T0 + 5)
    (alert,) = obs.alerts
    assert alert.rule_id == "FR-008"
    assert alert.group_key == "acct|ünï|1"
    assert alert.alert_id == hashlib.sha256(f"FR-008|acct|ünï|1|{T0}".encode()).hexdigest()[:32]
    assert h.state("FR-008", "acct|ünï|1", T0) is not None


def test_events_whose_group_key_is_null_do_not_match() -> None:
    h = Harness()
    det = h.detector
    ev = parse_request_record(
        {"event_id": "e", "ts": T0, "account_id": "nobody", "operation": "face.identify"}
    )
    assert isinstance(ev, RequestEvent)
    ee = EnrichedEvent(ev, None, builtin_classification())
    # FR-006 groups by org: an unknown account has none
    assert [r.id for r in det.matching_rules(ee)] == ["FR-007", "FR-008"]


def test_events_that_match_nothing_return_the_shared_empty_observation() -> None:
    h = Harness()
    obs = h.feed("acct-le", "embeddings", event_id="x", ts=T0)
    assert obs is NOTHING
    assert (obs.matched, obs.duplicate, obs.alerts) == ([], False, [])
    assert len(h.store) == 0


def test_observation_lists_the_rules_an_event_counted_for() -> None:
    h = Harness()
    obs = h.feed("acct-le", "face.identify", event_id="x", ts=T0, capture={"device": "body_camera"})
    assert sorted(obs.matched) == ["FR-001", "FR-002", "FR-006", "FR-007"]
    assert sorted(a.rule_id for a in obs.alerts) == ["FR-001", "FR-002"]


# ----------------------------------------------------------------------------- redeliveries


def test_redelivery_adds_nothing_to_count() -> None:
    h = Harness()
    llm(h, "a", T0 + 1)
    llm(h, "b", T0 + 2)
    for _ in range(3):
        obs = llm(h, "a", T0 + 1)
        assert obs.duplicate
        assert obs.matched == []
        assert obs.alerts == []
    obs = llm(h, "b", T0 + 50, operation="responses", image_count=5)
    assert obs.duplicate and obs.alerts == []
    (alert,) = llm(h, "c", T0 + 3).alerts
    assert alert.count == 3
    assert [s["event_id"] for s in alert.samples] == ["a", "b", "c"]


def test_redelivery_with_new_subject_ids_adds_nothing_to_distinct() -> None:
    h = Harness()
    for i in range(49):
        identify(h, f"e-{i}", T0 + i, [f"s-{i}"])
    st = h.state("FR-006", "org-retail", T0)
    assert st is not None
    # (obs.duplicate follows the event's primary scope, account_id, where FR-007 kept only the
    # first identification's id: so it is not asserted here)
    obs = identify(h, "e-3", T0 + 3, [f"new-{k}" for k in range(10)])
    assert "FR-006" not in obs.matched
    obs = identify(h, "e-4", T0 + 4, ["new-x"], acct="acct-west")  # another account, same org
    assert "FR-006" not in obs.matched
    assert h.alerts == []
    assert st.distinct[0] is not None and len(st.distinct[0]) == 49
    (alert,) = identify(h, "e-49", T0 + 49, ["s-49"]).alerts
    assert (alert.count, alert.distinct) == (50, 50)


def test_redelivery_after_firing_is_recognised() -> None:
    h = Harness()
    for eid in "abc":
        llm(h, eid, T0 + 1)
    assert len(h.alerts) == 1
    assert llm(h, "b", T0 + 1).duplicate
    assert len(h.alerts) == 1


def test_the_first_delivery_counts() -> None:
    # the first delivery did not count for FR-007's identify requirement; its redelivery as an
    # identification must not count either
    h = Harness()
    h.feed("acct-gallery", "face.detect", event_id="x", ts=DAY0 + 1)
    for i in range(19):
        enroll(h, f"en-{i}", DAY0 + 10 + i)
    enroll(h, "x-enroll", DAY0 + 100)
    assert h.alerts == []
    obs = h.feed("acct-gallery", "face.identify", event_id="x-enroll", ts=DAY0 + 100)
    assert obs.duplicate
    assert h.alerts == []


def test_fr007_redelivery_with_changed_fields_adds_nothing() -> None:
    """SPEC 4.1: a redelivery adds nothing, whatever its other fields.

    The 21st..25th enrolments arrive after the enrolment requirement is met; a redelivery of
    one of them as an identification must still be recognised, or it would satisfy the
    identify requirement and fire a false FR-007 alert. Hence ids are kept until the window
    fires (SPEC 4.1's bound read as "the ids needed to decide the thresholds").
    """
    h = Harness()
    for i in range(25):
        enroll(h, f"en-{i}", DAY0 + i)
    obs = h.feed("acct-gallery", "face.identify", event_id="en-24", ts=DAY0 + 24)
    assert obs.alerts == [], "a redelivered enrolment fired FR-007 as an identification"


def test_redelivery_beyond_a_met_threshold_leaves_observed_count() -> None:
    """SPEC 4.1/5: a redelivery adds nothing to count; observed.count is what the window counted."""

    def run(redeliver: bool) -> Alert:
        h = Harness()
        for i in range(25):
            enroll(h, f"en-{i}", DAY0 + i)
        if redeliver:
            enroll(h, "en-24", DAY0 + 24)  # an exact copy
        (alert,) = h.feed("acct-gallery", "face.identify", event_id="idn", ts=DAY0 + 99).alerts
        return alert

    assert run(redeliver=True).count == run(redeliver=False).count


# ----------------------------------------------------------------------------- bounded state


def test_fired_window_keeps_counting_and_recognising_redeliveries() -> None:
    h = Harness()
    for i in range(100):
        enroll(h, f"en-{i}", DAY0 + i)
    st = h.state("FR-007", "acct-gallery", DAY0)
    assert st is not None and not st.fired
    assert len(st.ids) == 100
    assert len(st.samples) == 10
    for i in range(50):
        llm(h, f"l-{i}", T0 + i)
    llm(h, "l-7", T0 + 7)  # a redelivery after firing adds nothing
    st = h.state("FR-005", "acct-vision", T0)
    assert st is not None and st.fired
    assert st.count == len(st.ids) == 50  # counted on after firing (SPEC 5)
    assert len(st.samples) == 10


def test_distinct_state_keeps_every_value_after_firing() -> None:
    h = Harness()
    identify(h, "big", T0, [f"s-{i}" for i in range(40)])
    identify(h, "big2", T0 + 1, [f"t-{i}" for i in range(40)])
    identify(h, "big2", T0 + 1, [f"u-{i}" for i in range(40)])  # a redelivery: ignored
    st = h.state("FR-006", "org-retail", T0)
    assert st is not None and st.fired
    assert st.distinct[0] is not None and len(st.distinct[0]) == 80
    assert st.ids == {id_hash("big"), id_hash("big2")}


def test_distinct_values_stop_at_the_threshold_before_firing() -> None:
    rules = parse_rules(
        b"""
version: 1
rules:
  - id: R
    title: two requirements
    clause: test
    severity: low
    match: {field: fr_kind, equals: identify}
    group_by: account_id
    window: 1h
    requires:
      - {kind: distinct, field: subject_ids, at_least: 5}
      - {kind: count, at_least: 100}
""",
        "t.yaml",
    )
    h = Harness(rules)
    identify(h, "a", T0, [f"s-{i}" for i in range(40)])
    st = h.state("R", "acct-east", T0)
    assert st is not None
    assert st.distinct[0] is not None and len(st.distinct[0]) == 40  # all counted (SPEC 5)


def test_window_keeps_every_counted_id_until_it_fires_up_to_a_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ids are kept until the window fires, so a redelivery with new subject ids adds nothing;
    a window that never fires stops keeping ids at MAX_IDS_PER_WINDOW."""
    h = Harness()
    for i in range(200):
        identify(h, f"same-{i}", T0 + i, ["subj-0"])
    st = h.state("FR-006", "org-retail", T0)
    assert st is not None
    assert len(st.ids) == 200
    obs = identify(h, "same-7", T0 + 7, [f"subj-new-{i}" for i in range(60)])
    assert obs.duplicate and h.alerts == []
    monkeypatch.setattr(engine, "MAX_IDS_PER_WINDOW", 5)
    h2 = Harness()
    for i in range(20):
        identify(h2, f"cap-{i}", T0 + i, ["subj-0"])
    st2 = h2.state("FR-006", "org-retail", T0)
    assert st2 is not None and len(st2.ids) == 5


def test_evidence_samples_carry_request_metadata_only() -> None:
    h = Harness()
    secret = {
        "subject_ids": ["subj-secret-1"],
        "prompt": "who is this PROMPT-TEXT",
        "images": ["data:image/png;base64,IMAGEBYTES"],
        "embedding": [0.123456, 0.654321],
        "messages": [{"role": "user", "content": "MESSAGE-TEXT"}],
    }
    for i in range(12):
        llm(h, f"l{i}", T0 + i, model="gpt-v", api_key_id="k1", region="r", **secret)
    (alert,) = [a for a in h.alerts if a.rule_id == "FR-005"]
    assert len(alert.samples) == 3
    for s in alert.samples:
        assert tuple(s) == SAMPLE_FIELDS
    doc = alert.to_json("replay", T0, "0")
    for needle in (b"subj-secret", b"PROMPT-TEXT", b"IMAGEBYTES", b"0.123456", b"MESSAGE-TEXT"):
        assert needle not in doc
    assert b"subject_ids" not in doc


def test_at_most_ten_samples() -> None:
    h = Harness()
    for i in range(60):
        identify(h, f"e-{i:02d}", T0 + 1000 * i, [f"s-{i}"])
    (alert,) = h.alerts
    assert len(alert.samples) == 10
    assert [s["event_id"] for s in alert.samples] == [f"e-{i:02d}" for i in range(10)]
    doc = orjson.loads(alert.to_json("live", T0, "v"))
    assert doc["evidence"]["first_ts"] == "2026-11-18T07:00:00.000Z"
    assert doc["evidence"]["last_ts"] == "2026-11-18T07:00:09.000Z"


def test_evidence_sample_shape() -> None:
    ev = parse_request_record(
        {
            "event_id": "e",
            "ts": "2026-11-18T07:00:01.5Z",
            "account_id": "a",
            "operation": "face.identify",
            "gallery": {"kind": "suspects"},
            "capture": {"device": "mobile"},
            "subject_ids": ["x"],
        }
    )
    assert isinstance(ev, RequestEvent)
    s = evidence_sample(EnrichedEvent(ev, None, builtin_classification()))
    assert s == {
        "event_id": "e",
        "ts": T0 + 1500,
        "operation": "face.identify",
        "api_key_id": None,
        "model": None,
        "region": None,
        "client_ip": None,
        "gallery": {"id": None, "kind": "suspects"},
        "capture": {"device": "mobile", "setting": None},
        "intent": None,
    }


# ----------------------------------------------------------------------------- expiry


def test_state_is_kept_until_event_time_is_more_than_24h_past_the_window_end() -> None:
    h = Harness()
    h.feed(event_id="e", ts=T0 + 10)  # FR-001 window [T0, T0 + 1h)
    assert h.state("FR-001", "acct-le", T0) is not None
    end = T0 + HOUR
    h.feed("acct-other", "embeddings", event_id="tick-1", ts=end + DAY)
    assert h.state("FR-001", "acct-le", T0) is not None
    assert h.store.entries_by_rule().get("FR-001") == 1
    h.feed("acct-other", "embeddings", event_id="tick-2", ts=end + DAY + 1)
    assert h.state("FR-001", "acct-le", T0) is None
    assert "FR-001" not in h.store.entries_by_rule()


def test_day_windows_outlive_hour_windows() -> None:
    h = Harness()
    h.feed("acct-le", "face.identify", event_id="e", ts=DAY0 + 10)
    assert h.state("FR-007", "acct-le", DAY0) is not None
    h.feed("acct-other", "embeddings", event_id="t", ts=DAY0 + HOUR + DAY + 1)
    assert h.state("FR-001", "acct-le", DAY0) is None
    assert h.state("FR-007", "acct-le", DAY0) is not None
    h.feed("acct-other", "embeddings", event_id="t2", ts=DAY0 + 2 * DAY + 1)
    assert h.state("FR-007", "acct-le", DAY0) is None
    assert len(h.store) == 0


def test_late_events_within_retention_still_count() -> None:
    h = Harness()
    llm(h, "a", T0 + 1)
    llm(h, "b", T0 + 2)
    h.feed("acct-other", "embeddings", event_id="t", ts=T0 + HOUR + DAY)  # watermark far ahead
    (alert,) = llm(h, "c", T0 + 3).alerts
    assert alert.window_start_ms == T0


def test_a_dropped_window_starts_fresh_and_may_fire_again_with_the_same_alert_id() -> None:
    h = Harness()
    (first,) = h.feed(event_id="e1", ts=T0 + 10).alerts
    assert h.feed(event_id="e2", ts=T0 + 20).alerts == []  # fired already
    h.feed("acct-other", "embeddings", event_id="t", ts=T0 + HOUR + DAY + 1)
    assert h.state("FR-001", "acct-le", T0) is None
    (again,) = h.feed(event_id="e3", ts=T0 + 30).alerts
    assert again.alert_id == first.alert_id
    assert again.window_start_ms == first.window_start_ms
    # and the fresh window does not remember the ids of the dropped one
    assert "FR-001" in h.feed(event_id="e1", ts=T0 + 10).matched


def test_a_redelivery_after_expiry_counts_in_a_fresh_window() -> None:
    h = Harness()
    llm(h, "a", T0 + 1)
    llm(h, "b", T0 + 2)
    h.feed("acct-other", "embeddings", event_id="t", ts=T0 + HOUR + DAY + 1)
    assert h.state("FR-005", "acct-vision", T0) is None
    assert "FR-005" in llm(h, "a", T0 + 1).matched
    # the fresh window is past retention, but is kept until the clock next moves
    fresh = h.state("FR-005", "acct-vision", T0)
    assert fresh is not None and fresh.count == 1
    assert llm(h, "a", T0 + 1).duplicate  # and recognises a redelivery meanwhile


def test_late_events_beyond_retention_count_together_until_the_clock_moves() -> None:
    """SPEC 4.1: no event is dropped for being late; a fresh window may fire again.

    Three late events of one window, 48h behind the clock with nothing newer between them,
    fire a count >= 3 rule as they would in time (a window dropped after each event never
    would: the cause of live alerts missing from replay when one record ran days ahead).
    """
    h = Harness()
    h.feed("acct-other", "embeddings", event_id="t", ts=T0 + 2 * DAY)
    llm(h, "a", T0 + 1)
    llm(h, "b", T0 + 2)
    (alert,) = llm(h, "c", T0 + 3).alerts
    assert alert.window_start_ms == T0 and alert.count == 3
    # the next move of the clock drops it
    h.feed("acct-other", "embeddings", event_id="t2", ts=T0 + 2 * DAY + 1)
    assert h.state("FR-005", "acct-vision", T0) is None


def test_an_event_that_does_not_move_the_clock_drops_nothing() -> None:
    h = Harness()
    h.feed(event_id="e", ts=T0 + 10)
    h.feed("acct-other", "embeddings", event_id="t", ts=T0 + HOUR + DAY + 1)
    assert h.state("FR-001", "acct-le", T0) is None
    h.feed(event_id="e2", ts=T0 + 20)
    assert h.detector.expire() == []  # same clock: no pass
    assert h.state("FR-001", "acct-le", T0) is not None


def test_the_watermark_is_the_highest_event_time_seen() -> None:
    h = Harness()
    h.feed("acct-other", "embeddings", event_id="t", ts=T0 + 5 * HOUR)
    h.feed("acct-other", "embeddings", event_id="t2", ts=T0)
    assert h.detector.watermark_ms == T0 + 5 * HOUR


def test_window_state_round_trips_through_the_wire_form() -> None:
    h = Harness()
    for i in range(3):
        llm(h, f"a{i}", T0 + 1 + i)
    st = h.state("FR-005", "acct-vision", T0)
    assert st is not None and st.fired
    wire = orjson.loads(orjson.dumps(st.value().to_wire()))
    assert wire["v"] == 2
    value = WindowValue.from_wire(wire)
    assert value is not None
    back = WindowState.from_value(value)
    assert wire["ic"] == len(st.ids) == 3  # the ids themselves are kept in chunks beside it
    assert (back.fired, back.count, back.req_counts, back.alert) == (
        st.fired,
        st.count,
        st.req_counts,
        st.alert,
    )


@pytest.mark.parametrize("scope", ["account_id", "org_id"])
def test_scoped_detector_runs_only_its_group_by(scope: str) -> None:
    det = Detector(load_rules(), MemoryWindowStore(), scope=scope)
    assert {r.group_by for r in det.rules} == {scope}
