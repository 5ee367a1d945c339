"""Properties of SPEC 4.1: which alerts fire does not depend on interleaving, order or redeliveries.

A small universe: five accounts in two organisations plus an unknown account, face and LLM
operations, subject ids from a small pool, timestamps within three hours around 00:00 UTC (so
hour and day windows both have boundaries), and redeliveries of some events. Every stream stays
within the 24h retention, so no window state expires.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.classify import EnrichedEvent
from streams.core.engine import Detector
from streams.core.rules import (
    RuleSet,
    builtin_classification,
    builtin_rules_bytes,
    load_rules,
    parse_rules,
)
from streams.core.state import MemoryWindowStore
from topics.accounts import AccountDirectory, AccountRecord
from topics.requests import RequestEvent, parse_request_record
from topics.timestamps import parse_rfc3339_ms

BASE_MS = parse_rfc3339_ms("2026-11-18T22:30:00Z")
SPAN_MS = 3 * 3_600_000

ACCOUNT_RECORDS = (
    AccountRecord("a-le", org_id="org-1", sector="law_enforcement", country="US"),
    AccountRecord("a-shop", org_id="org-1", sector="commercial", country="US"),
    AccountRecord("a-kyc", org_id="org-2", sector="commercial", approved_uses=("identification",)),
    AccountRecord("a-fleet", org_id="org-2", sector="commercial", country="DE"),
    AccountRecord("a-agent", org_id="org-2", sector="commercial", acting_for="law_enforcement"),
)
ACCOUNTS = AccountDirectory()
for _rec in ACCOUNT_RECORDS:
    ACCOUNTS.apply(_rec)
ACCOUNT_IDS = [a.account_id for a in ACCOUNT_RECORDS] + ["a-unknown"]

# the unit whose events must keep their order for every group they belong to: the organisation
# (FR-006 groups by org_id), or the account when it has none
UNIT = {a.account_id: a.org_id or a.account_id for a in ACCOUNT_RECORDS} | {
    "a-unknown": "a-unknown"
}


def _low_threshold_rules() -> RuleSet:
    data = (
        builtin_rules_bytes()
        .replace(b"at_least: 50", b"at_least: 6")
        .replace(b"at_least: 20", b"at_least: 3")
        .replace(b"at_least: 3}", b"at_least: 2}")
    )
    rules = parse_rules(data, "low-thresholds.yaml")
    assert [q.at_least for q in rules.by_id("FR-006").requires] == [6]
    assert [q.at_least for q in rules.by_id("FR-007").requires] == [3, 1]
    assert [q.at_least for q in rules.by_id("FR-005").requires] == [2]
    return rules


RULE_SETS = {"builtin": load_rules(), "low_thresholds": _low_threshold_rules()}
MATCHER = Detector(load_rules(), MemoryWindowStore())

SUBJECTS = [f"s{i:02d}" for i in range(40)]

operations = st.one_of(
    st.sampled_from(
        [
            {"operation": "face.identify"},
            {"operation": "face.find_similar"},
            {"operation": "face.verify"},
            {"operation": "person_group.add_face"},
            {"operation": "face_list.add_face"},
            {"operation": "person_group.add_face"},  # enrolments twice as likely: FR-007
            {"operation": "face_list.add_face"},
            {"operation": "face.detect"},
        ]
    ),
    st.builds(
        lambda op, label, score, images: {
            "operation": op,
            "image_count": images,
            "intent": {"label": label, "score": score},
        },
        st.sampled_from(["chat.completions", "responses", "vision.analyze"]),
        st.sampled_from(["identify_person", "verify_identity", "none"]),
        st.sampled_from([0.5, 0.79, 0.8, 0.95]),
        st.sampled_from([0, 1, 2]),
    ),
)
contexts = st.fixed_dictionaries(
    {},
    optional={
        "gallery": st.fixed_dictionaries(
            {"id": st.just("g"), "kind": st.sampled_from(["suspects", "other", "Suspects"])}
        ),
        "capture": st.fixed_dictionaries(
            {},
            optional={
                "device": st.sampled_from(["body_camera", "mobile", "cctv"]),
                "setting": st.sampled_from(["in_the_wild", "controlled"]),
            },
        ),
    },
)
metadata = st.fixed_dictionaries(
    {},
    optional={
        "api_key_id": st.sampled_from(["k1", "k2"]),
        "model": st.sampled_from(["m1", "m2"]),
        "region": st.sampled_from(["eastus", "uksouth"]),
        "client_ip": st.sampled_from(["198.51.100.1", "198.51.100.2"]),
        "faces_detected": st.integers(0, 3),
    },
)
subject_lists = st.lists(st.sampled_from(SUBJECTS), max_size=8)


@st.composite
def original_events(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Events with unique ids (no redeliveries yet)."""
    n = draw(st.integers(1, 50))
    out = []
    for i in range(n):
        ev: dict[str, Any] = {
            "event_id": f"e{i:03d}",
            "ts": BASE_MS + draw(st.integers(0, SPAN_MS)),
            "account_id": draw(st.sampled_from(ACCOUNT_IDS)),
        }
        ev.update(draw(operations))
        ev.update(draw(contexts))
        ev.update(draw(metadata))
        subjects = draw(subject_lists)
        if subjects:
            ev["subject_ids"] = subjects
        out.append(ev)
    return out


def _matching(raw: dict[str, Any]) -> set[str]:
    ev = _parse(raw)
    return {
        r.id
        for r in MATCHER.matching_rules(
            EnrichedEvent(ev, ACCOUNTS.get(ev.account_id), builtin_classification())
        )
    }


def _parse(raw: dict[str, Any]) -> RequestEvent:
    ev = parse_request_record(copy.deepcopy(raw))
    assert isinstance(ev, RequestEvent), ev
    return ev


@st.composite
def changed_copy(draw: st.DrawFn, original: dict[str, Any]) -> dict[str, Any]:
    """A redelivery with other field values: same event_id, account, time and operation.

    The copy matches no rule the original did not match: window state is kept per rule, so a
    rule cannot know the first delivery of an event that it never matched.
    """
    ev = {k: original[k] for k in ("event_id", "ts", "account_id", "operation")}
    if "intent" in original:
        ev["image_count"] = original.get("image_count", 0)
        ev["intent"] = dict(original["intent"])
        ev["intent"]["score"] = draw(st.sampled_from([0.5, 0.8, 0.99]))
    ev.update(draw(contexts))
    ev.update(draw(metadata))
    subjects = draw(subject_lists)
    if subjects:
        ev["subject_ids"] = subjects
    if not _matching(ev) <= _matching(original):
        return dict(original)
    return ev


Tagged = tuple[dict[str, Any], bool]  # (event, is the original delivery)


@st.composite
def streams_with_redeliveries(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[Tagged]]:
    """(originals, the same with exact and changed redeliveries inserted after their original)."""
    originals = draw(original_events())
    stream: list[Tagged] = [(e, True) for e in originals]
    for _ in range(draw(st.integers(0, 15))):
        i = draw(st.integers(0, len(originals) - 1))
        orig = originals[i]
        redelivery = dict(orig) if draw(st.booleans()) else draw(changed_copy(orig))
        at = next(k for k, (e, first) in enumerate(stream) if first and e is orig)
        stream.insert(draw(st.integers(at + 1, len(stream))), (redelivery, False))
    return originals, stream


def fire(rules: RuleSet, events: list[dict[str, Any]]) -> list[str]:
    """The alert ids a fresh detector fires for the events, in order."""
    det = Detector(rules, MemoryWindowStore())
    fired = []
    for raw in events:
        ev = _parse(raw)
        fired.extend(
            a.alert_id
            for a in det.observe(
                EnrichedEvent(ev, ACCOUNTS.get(ev.account_id), builtin_classification())
            ).alerts
        )
        det.expire()
    assert len(fired) == len(set(fired)), "a window fired twice within retention"
    return fired


def events_of(stream: list[Tagged]) -> list[dict[str, Any]]:
    return [e for e, _ in stream]


PROPERTY = settings(max_examples=150)  # deadline and health checks: tests/conftest.py


@PROPERTY
@given(data=streams_with_redeliveries(), choice=st.data())
def test_interleaving_of_groups_does_not_change_alerts(
    data: tuple[list[dict[str, Any]], list[Tagged]], choice: st.DataObject
) -> None:
    _, stream = data
    per_unit: dict[str, list[Tagged]] = defaultdict(list)
    for tagged in stream:
        per_unit[UNIT[tagged[0]["account_id"]]].append(tagged)
    labels = [UNIT[e["account_id"]] for e, _ in stream]
    order = choice.draw(st.permutations(labels), label="interleaving")
    cursors = {u: iter(ts) for u, ts in per_unit.items()}
    interleaved = [next(cursors[u]) for u in order]
    for rules in RULE_SETS.values():
        assert set(fire(rules, events_of(interleaved))) == set(fire(rules, events_of(stream)))


@PROPERTY
@given(data=streams_with_redeliveries(), choice=st.data())
def test_order_within_one_group_does_not_change_alerts(
    data: tuple[list[dict[str, Any]], list[Tagged]], choice: st.DataObject
) -> None:
    _, stream = data
    unit = choice.draw(st.sampled_from(sorted({UNIT[e["account_id"]] for e, _ in stream})))
    slots = [k for k, (e, _) in enumerate(stream) if UNIT[e["account_id"]] == unit]
    mine = choice.draw(st.permutations([stream[k] for k in slots]), label="permutation")
    # the first delivery counts: keep each original ahead of its redeliveries
    for k, (e, first) in enumerate(mine):
        if first:
            j = next(i for i, (f, _) in enumerate(mine) if f["event_id"] == e["event_id"])
            mine[j], mine[k] = mine[k], mine[j]
    permuted = list(stream)
    for k, tagged in zip(slots, mine, strict=True):
        permuted[k] = tagged
    for rules in RULE_SETS.values():
        assert set(fire(rules, events_of(permuted))) == set(fire(rules, events_of(stream)))


@PROPERTY
@given(data=streams_with_redeliveries())
def test_redeliveries_do_not_change_alerts(data: tuple[list[dict[str, Any]], list[Tagged]]) -> None:
    originals, stream = data
    for rules in RULE_SETS.values():
        assert set(fire(rules, events_of(stream))) == set(fire(rules, originals))


def test_the_universe_fires_alerts() -> None:
    """Guard against a vacuous property: the low-threshold rules fire most kinds of alert."""
    events = [
        {"event_id": f"x{i}", "ts": BASE_MS + i, "account_id": acct, **op}
        for i, (acct, op) in enumerate(
            [("a-le", {"operation": "face.identify", "capture": {"device": "mobile"}})]
            + [("a-fleet", {"operation": "face.verify", "capture": {"device": "body_camera"}})]
            + [("a-unknown", {"operation": "face.verify"})]
            + [("a-shop", {"operation": "face.identify", "gallery": {"kind": "suspects"}})]
            + [("a-shop", {"operation": "person_group.add_face"})] * 3
            + [("a-shop", {"operation": "face.identify", "subject_ids": SUBJECTS[:6]})]
            + [
                (
                    "a-fleet",
                    {
                        "operation": "chat.completions",
                        "image_count": 1,
                        "intent": {"label": "identify_person", "score": 0.9},
                    },
                )
            ]
            * 2
        )
    ]
    det = Detector(RULE_SETS["low_thresholds"], MemoryWindowStore())
    rules = set()
    for raw in events:
        ev = _parse(raw)
        rules |= {
            a.rule_id
            for a in det.observe(
                EnrichedEvent(ev, ACCOUNTS.get(ev.account_id), builtin_classification())
            ).alerts
        }
    assert rules == {f"FR-00{i}" for i in range(1, 9)}
