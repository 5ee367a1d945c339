"""Replay and the alert lifecycle (SPEC 5): windows grow far past their thresholds, and the
last revision of each alert_id carries exactly what the rule counted there."""

from __future__ import annotations

import io
import random
import sys
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lifecycle_archive import (
    ACCOUNTS,
    EAST,
    FR001_ID,
    FR006_ID,
    HOUR,
    LE,
    T0,
    WEST,
    expected_last,
    last_revisions,
    lifecycle_events,
)

from streams.core.rules import load_rules
from streams.replay import replay
from topics.accounts import AccountDirectory

RULES = load_rules()


def directory() -> AccountDirectory:
    d = AccountDirectory()
    for a in ACCOUNTS:
        d.apply(a)
    return d


def run(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    data = b"".join(orjson.dumps(e) + b"\n" for e in events)
    out = io.BytesIO()
    replay([("archive.jsonl", io.BytesIO(data))], RULES, directory(), out)
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def by_alert(alerts: list[dict[str, Any]], aid: str) -> list[dict[str, Any]]:
    return [a for a in alerts if a["alert_id"] == aid]


def test_last_revisions_carry_exactly_what_was_counted_with_updates_at_powers_of_ten() -> None:
    events = lifecycle_events()
    alerts = run(events)
    last = last_revisions(alerts)
    want = expected_last(events)
    assert set(last) == set(want)
    for aid, (count, distinct) in want.items():
        got = last[aid]
        assert got["status"] == "closed", aid
        assert (got["observed"]["count"], got["observed"]["distinct"]) == (count, distinct)
        assert got["observed"]["estimated"] is False
    assert want[FR006_ID][1] == 5_000
    le = by_alert(alerts, FR001_ID)
    assert [(a["revision"], a["status"], a["observed"]["count"]) for a in le] == [
        (0, "open", 1),
        (1, "update", 10),
        (2, "update", 100),
        (3, "update", 1_000),
        (4, "closed", want[FR001_ID][0]),
    ]
    org = by_alert(alerts, FR006_ID)
    assert [(a["revision"], a["status"], a["observed"]["distinct"]) for a in org] == [
        (0, "open", 50),
        (1, "update", 500),
        (2, "update", 5_000),
        (3, "closed", 5_000),
    ]
    # one alert each: the open counts, the revisions do not
    assert sum(a["status"] == "open" for a in alerts) == 2
    assert all(a["schema"] == "frwatch.alert/v2" for a in le)
    assert [len(a["evidence"]["samples"]) for a in le] == [1, 10, 10, 10, 10]


@settings(max_examples=15)
@given(st.randoms(use_true_random=False))
def test_shuffling_within_a_group_changes_no_last_revision(rnd: random.Random) -> None:
    events = lifecycle_events(le_events=300, subjects=120, seed=3, altered=False)
    # shuffle the order of each group's events among the slots that group holds
    for group in ({LE}, {EAST, WEST}):
        slots = [i for i, e in enumerate(events) if e["account_id"] in group]
        moved = [events[i] for i in slots]
        rnd.shuffle(moved)
        for i, e in zip(slots, moved, strict=True):
            events[i] = e

    def figures(alerts: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
        return {
            aid: (a["status"], a["observed"]["count"], a["observed"]["distinct"])
            for aid, a in last_revisions(alerts).items()
        }

    assert figures(run(events)) == figures(
        run(lifecycle_events(le_events=300, subjects=120, seed=3, altered=False))
    )


def test_late_events_after_closing_send_one_more_closed_when_the_state_is_dropped() -> None:
    def le(i: int, ts: int) -> dict[str, Any]:
        return {"event_id": f"le-{i}", "ts": ts, "account_id": LE, "operation": "face.verify"}

    clock = {"event_id": "clock", "ts": T0 + 2 * HOUR, "account_id": "x", "operation": "embeddings"}
    end = {"event_id": "end", "ts": T0 + 27 * HOUR, "account_id": "x", "operation": "embeddings"}
    alerts = run([le(0, T0), le(1, T0 + 1), clock, le(2, T0 + 2), le(3, T0 + 3), end])
    mine = [(a["revision"], a["status"], a["observed"]["count"]) for a in alerts]
    # closed once the clock passed end + 5m; the late events count; dropped: closed again
    assert mine == [(0, "open", 1), (1, "closed", 2), (2, "closed", 4)]


def test_a_closed_window_unchanged_closes_once() -> None:
    def le(i: int, ts: int) -> dict[str, Any]:
        return {"event_id": f"le-{i}", "ts": ts, "account_id": LE, "operation": "face.verify"}

    late = {"event_id": "end", "ts": T0 + 30 * HOUR, "account_id": "x", "operation": "embeddings"}
    alerts = run([le(0, T0), le(1, T0 + 1), late])
    assert [(a["revision"], a["status"]) for a in alerts] == [(0, "open"), (1, "closed")]


def test_one_event_firing_several_rules_for_one_group_relates_the_alerts() -> None:
    ev = {
        "event_id": "cam-1",
        "ts": T0,
        "account_id": LE,
        "operation": "face.identify",
        "capture": {"device": "body_camera", "setting": "in_the_wild"},
    }
    opens = [a for a in run([ev]) if a["status"] == "open"]
    ids = {a["rule_id"]: a["alert_id"] for a in opens}
    assert {"FR-001", "FR-002"} <= set(ids)
    for a in opens:
        assert sorted(a["related"]) == sorted(x for x in ids.values() if x != a["alert_id"])
