"""An archive whose windows grow far past their thresholds (SPEC 5 lifecycle), and what the
last revision of each alert must say, computed independently of the detector.

FR-001: thousands of identifications by a US police account in one hour (fires at 1,
updates at 10, 100, 1000). FR-006: identifications across one organisation reaching 5,000
distinct subjects, one new subject at most per event (fires at exactly 50, updates at 500
and 5,000). Redeliveries are mixed in, some with other subjects (the first delivery counts).
"""

from __future__ import annotations

import random
from typing import Any

from topics.accounts import AccountRecord
from topics.alerts import alert_id
from topics.timestamps import parse_rfc3339_ms

HOUR = 3_600_000
T0 = parse_rfc3339_ms("2026-11-18T07:00:00Z")
LE = "acct-le-lifecycle"
EAST, WEST = "acct-retail-east", "acct-retail-west"
ORG = "org-retail-lifecycle"

ACCOUNTS = (
    AccountRecord(LE, org_id="org-pd", sector="law_enforcement", country="US"),
    AccountRecord(EAST, org_id=ORG, sector="commercial", country="US"),
    AccountRecord(WEST, org_id=ORG, sector="commercial", country="US"),
)

FR001_ID = alert_id("FR-001", LE, T0)
FR006_ID = alert_id("FR-006", ORG, T0)


def account_lines() -> list[dict[str, Any]]:
    """The account records as JSON-able dicts (an accounts file or topic)."""
    return [a.to_wire() for a in ACCOUNTS]


def lifecycle_events(
    le_events: int = 3_000, subjects: int = 5_000, seed: int = 7, altered: bool = True
) -> list[dict[str, Any]]:
    """Both groups interleaved, in time order within the hour, with redeliveries (`altered`:
    some of them with other subjects, which the first delivery decides against)."""
    rng = random.Random(seed)
    le = [
        {
            "event_id": f"le-{i}",
            "ts": T0 + (i * HOUR) // (le_events + 1),
            "account_id": LE,
            "operation": "face.verify",
        }
        for i in range(le_events)
    ]
    org = []
    n = 0
    for s in range(subjects):
        # each new subject once, sometimes followed by an event naming an earlier one
        org.append(_identify(f"org-{n}", T0 + (s * HOUR) // (subjects + 1), f"subj-{s}", rng))
        n += 1
        if rng.random() < 0.1:
            org.append(_identify(f"org-{n}", org[-1]["ts"], f"subj-{rng.randrange(s + 1)}", rng))
            n += 1
    events = sorted(le + org, key=lambda e: (e["ts"], e["event_id"]))
    for e in rng.sample(events, len(events) // 20):
        copy = dict(e)
        if altered and "subject_ids" in copy and rng.random() < 0.5:
            copy["subject_ids"] = ["subj-never-counted"]  # a redelivery adds nothing
        events.insert(min(len(events), events.index(e) + rng.randrange(1, 50)), copy)
    return events


def _identify(event_id: str, ts: int, subject: str, rng: random.Random) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "ts": ts,
        "account_id": rng.choice((EAST, WEST)),
        "operation": "face.identify",
        "subject_ids": [subject],
    }


def expected_last(events: list[dict[str, Any]]) -> dict[str, tuple[int, int | None]]:
    """alert_id -> (count, distinct) that the last revision must carry: distinct event ids
    of the group's matching events (first delivery counts), and distinct subjects."""
    first: dict[str, dict[str, Any]] = {}
    for e in events:
        first.setdefault(e["event_id"], e)
    le = [e for e in first.values() if e["account_id"] == LE]
    org = [e for e in first.values() if e["account_id"] in (EAST, WEST)]
    subjects = {s for e in org for s in e["subject_ids"]}
    return {FR001_ID: (len(le), None), FR006_ID: (len(org), len(subjects))}


def last_revisions(alerts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The highest revision per alert_id (what a consumer keeps)."""
    last: dict[str, dict[str, Any]] = {}
    for a in alerts:
        have = last.get(a["alert_id"])
        if have is None or a["revision"] >= have["revision"]:
            last[a["alert_id"]] = a
    return last
