"""The report's timelines: matched events per (rule, group, bucket), kept within bounds."""

from __future__ import annotations

from streams.core.classify import EnrichedEvent
from streams.core.engine import Detector
from streams.core.rules import load_rules
from streams.core.state import MemoryWindowStore
from streams.investigate.timeline import HOUR_MS, MINUTE_MS, MatchTimelines, bucket_ms
from topics.accounts import AccountRecord
from topics.requests import Intent, RequestEvent

RULES = load_rules()
T0 = 1_795_000_000_000 - 1_795_000_000_000 % HOUR_MS  # on the hour


def run(events: list[RequestEvent], accounts: dict[str, AccountRecord]) -> MatchTimelines:
    detector = Detector(RULES, MemoryWindowStore())
    timelines = MatchTimelines(RULES)
    for e in events:
        ee = EnrichedEvent(e, accounts.get(e.account_id), RULES.classification)
        obs = detector.observe(ee)
        timelines.observed(ee, obs)
        detector.expire()
    return timelines


def vision(i: int, ts: int, account: str = "acct-v") -> RequestEvent:
    """An FR-005 match: identification through a vision model (3 fire the rule)."""
    return RequestEvent(
        f"{account}-{i}",
        ts,
        account,
        "chat.completions",
        image_count=1,
        intent=Intent("identify_person", 0.95),
    )


def test_matching_events_per_minute_around_the_window() -> None:
    minutes = [5, 5, 7, 30, 75]  # the last one is in the next window
    events = [vision(i, T0 + m * MINUTE_MS + 1) for i, m in enumerate(minutes)]
    events.append(events[0])  # a redelivery is not a matching event again
    tl = run(events, {})
    assert tl.matched["FR-005"] == 5
    view = tl.around("FR-005", "acct-v", T0, T0 + HOUR_MS)
    assert (view.bucket_ms, view.start_ms, view.end_ms) == (
        MINUTE_MS,
        T0 - HOUR_MS,
        T0 + 2 * HOUR_MS,
    )
    assert len(view.counts) == 180
    got = {b: n for b, n in view.counts if n}
    assert got == {
        T0 + 5 * MINUTE_MS: 2,
        T0 + 7 * MINUTE_MS: 1,
        T0 + 30 * MINUTE_MS: 1,
        T0 + 75 * MINUTE_MS: 1,
    }
    assert not view.partial
    assert tl.around("FR-005", "acct-other", T0, T0 + HOUR_MS).counts[0] == (T0 - HOUR_MS, 0)


def test_day_windows_count_per_hour() -> None:
    fr007 = RULES.by_id("FR-007")
    assert bucket_ms(fr007) == HOUR_MS
    assert bucket_ms(RULES.by_id("FR-001")) == MINUTE_MS


def test_buckets_that_no_alert_needs_are_dropped_and_fired_ones_kept() -> None:
    # one account fires FR-005 in its first hour; another matches once an hour for 10 days
    # without ever firing: its old buckets go, the fired window's stay
    events = [vision(i, T0 + i * MINUTE_MS, "acct-fires") for i in range(3)]
    events += [vision(100 + h, T0 + h * HOUR_MS + 1, "acct-quiet") for h in range(240)]
    tl = run(events, {})
    quiet = tl._counts[("FR-005", "acct-quiet")]
    # about the retention (24h) plus two windows: not the ten days seen
    assert 24 <= len(quiet) <= 28
    fired = tl.around("FR-005", "acct-fires", T0, T0 + HOUR_MS)
    assert sum(n for _, n in fired.counts) == 3
    assert tl._open_buckets == sum(len(b) for b in tl._counts.values())


def test_org_rules_count_per_org() -> None:
    accounts = {
        a: AccountRecord(a, org_id="org-1", sector="commercial") for a in ("acct-1", "acct-2")
    }
    events = [
        RequestEvent(
            f"e{i}", T0 + i * 1000, f"acct-{1 + i % 2}", "face.identify", subject_ids=(f"s{i}",)
        )
        for i in range(60)
    ]
    tl = run(events, accounts)
    view = tl.around("FR-006", "org-1", T0, T0 + HOUR_MS)
    assert sum(n for _, n in view.counts) == 60
    assert tl.matched["FR-006"] == 60
