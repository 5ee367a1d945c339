"""Stage 2 (`streams.app.detection`): routed items through the core, window state in a table.

Pure: the table is a plain dict. Items are built by the real Router, so the wire format between
the stages is the one the live worker sends.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import orjson
import pytest

from streams.app.detection import (
    DetectStage,
    TableWindowStore,
    ids_key,
    samples_key,
)
from streams.app.routing import Router, destination
from streams.core.classify import EnrichedEvent
from streams.core.engine import Detector
from streams.core.rules import RuleSet, builtin_rules_bytes, load_rules, parse_rules
from streams.core.state import (
    MemoryWindowStore,
    id_hash,
    split_window_key,
    window_key,
)
from streams.core.windows import RETENTION_MS
from streams.synthetic import (
    DEFAULT_START_MS,
    HOUR_MS,
    demo_traffic,
    sample_directory,
)
from topics.accounts import AccountDirectory
from topics.alerts import Alert, alert_id
from topics.dlq import INTERNAL_ERROR
from topics.requests import RequestEvent, parse_request_record
from topics.stage2 import watermark_message
from topics.window_state import WindowValue

DETECT_TOPIC = "frwatch-detect"
PARTITIONS = 4
RULES = load_rules()
DAY_MS = 24 * HOUR_MS
HOUR0 = DEFAULT_START_MS - DEFAULT_START_MS % HOUR_MS
NOW = DEFAULT_START_MS + 400 * DAY_MS  # the wall clock: after every event of these tests


def directory() -> AccountDirectory:
    return sample_directory()


class Pipeline:
    """Router -> stage-2 messages per partition -> DetectStage, flushing like the live agent."""

    def __init__(self, rules: RuleSet = RULES, flush: bool = True) -> None:
        self.router = Router(rules, directory(), PARTITIONS)
        self.table: dict[str, Any] = {}
        self.stage = DetectStage(rules, self.table, PARTITIONS)
        self.flush = flush
        self.high_ms = 0
        self.offsets: Counter[int] = Counter()
        self.alerts: list[Alert] = []
        self.processed = self.duplicate = self.error = 0
        self.matches: Counter[str] = Counter()

    def messages(self, record: Any, kafka_ts_ms: int = 0) -> dict[int, bytes]:
        """The stage-2 messages one input message turns into, by destination partition."""
        routed = self.router.route(orjson.dumps(record), "api.requests", 0, 0, kafka_ts_ms, NOW)
        self.processed += routed.processed
        self.high_ms = max([self.high_ms, *routed.event_ts_ms])
        # the messages as the worker sends them (`topics.stage2`, trusted by detect)
        out = dict(routed.forward_messages)
        assert len(out) == len(routed.forward_messages)
        return out

    def detect(self, partition: int, value: bytes) -> Any:
        out = self.stage.observe(value, DETECT_TOPIC, partition, self.offsets[partition])
        self.offsets[partition] += 1
        self.alerts.extend(a for a, _ in out.alerts)
        self.processed += out.processed
        self.duplicate += out.duplicate
        self.error += out.error
        self.matches.update(out.matches)
        if self.flush:
            self.stage.store.flush()
        return out

    def feed(self, record: Any, kafka_ts_ms: int = 0) -> list[Any]:
        out = [self.detect(p, v) for p, v in self.messages(record, kafka_ts_ms).items()]
        self.advance(self.high_ms)
        return out

    def advance(self, ts_ms: int) -> None:
        """What the ingest of the one input partition tells every detect partition."""
        self.high_ms = max(self.high_ms, ts_ms)
        mark = watermark_message(1, [(0, self.high_ms, False)])
        for p in range(PARTITIONS):
            self.stage.report(p, mark)


class Reference:
    """The core Detector over all rules with an in-memory store (what replay runs)."""

    def __init__(self, rules: RuleSet = RULES) -> None:
        self.directory = directory()
        self.detector = Detector(rules, MemoryWindowStore())
        self.alerts: list[Alert] = []
        self.duplicate = 0
        self.matches: Counter[str] = Counter()

    def feed(self, record: dict[str, Any]) -> None:
        ev = parse_request_record(record)
        assert isinstance(ev, RequestEvent), ev
        obs = self.detector.observe(
            EnrichedEvent(
                ev, self.directory.get(ev.account_id), self.detector.rule_set.classification
            )
        )
        self.alerts.extend(obs.alerts)
        self.duplicate += obs.duplicate
        self.matches.update(obs.matched)


def wkey(rule_id: str, start: int, end: int, group: str) -> str:
    return window_key(rule_id, RULES.by_id(rule_id).state_version, start, end, group)


def ev(
    event_id: str, account_id: str, operation: str, ts: int = DEFAULT_START_MS, **fields: Any
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "ts": ts,
        "account_id": account_id,
        "operation": operation,
        **fields,
    }


def traffic(seed: int = 3, hours: int = 3) -> list[dict[str, Any]]:
    """Every scenario in each hour, background load, and redeliveries (some with new fields)."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for h in range(hours):
        events.extend(demo_traffic(seed + h, DEFAULT_START_MS + h * HOUR_MS, 40))
    for e in rng.sample(events, 80):
        copy = dict(e)
        if rng.random() < 0.5:
            copy["subject_ids"] = [f"subj-new-{rng.randrange(10_000)}"]
        if rng.random() < 0.3:
            copy["operation"] = "face.identify"  # a redelivery adds nothing, whatever it says
        events.insert(events.index(e) + rng.randrange(1, 40), copy)
    return events


# --- same alerts as the core ----------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 25])
def test_alerts_equal_the_core_detector_for_the_same_events(batch: int) -> None:
    events = traffic()
    pipe, ref = Pipeline(), Reference()
    for e in events:
        ref.feed(e)
    for i in range(0, len(events), batch):
        chunk = events[i : i + batch]
        pipe.feed(chunk[0] if batch == 1 else {"records": chunk}, kafka_ts_ms=1000 + i)
    assert {a.rule_id for a in ref.alerts} == {f"FR-{i:03d}" for i in range(1, 11)}
    if batch == 1:
        # same order of events per window: the same alerts, evidence included
        assert pipe.alerts == ref.alerts
    assert sorted(a.alert_id for a in pipe.alerts) == sorted(a.alert_id for a in ref.alerts)
    assert pipe.duplicate == ref.duplicate > 0
    assert pipe.processed + pipe.duplicate == len(events)
    assert pipe.matches == ref.matches
    assert pipe.error == 0


def test_alert_carries_the_kafka_timestamp_of_the_firing_events_message() -> None:
    pipe = Pipeline()
    pipe.feed(ev("v-1", "acct-visionapp", "chat.completions"), kafka_ts_ms=1)  # no match
    intent = {"label": "identify_person", "score": 0.9}
    outs = []
    for i in range(3):
        rec = ev(f"v-{i + 2}", "acct-visionapp", "chat.completions", image_count=1, intent=intent)
        outs += pipe.feed(rec, kafka_ts_ms=5000 + i)
    fired = [(a.rule_id, k) for out in outs for a, k in out.alerts]
    assert fired == [("FR-005", 5002)]


def test_org_scope_copy_is_evaluated_but_not_counted() -> None:
    pipe = Pipeline()
    for i in range(50):
        acct = "acct-retail-east" if i % 2 else "acct-retail-west"
        rec = ev(f"o-{i}", acct, "face.identify", ts=HOUR0 + i, subject_ids=[f"s-{i}"])
        pipe.feed(rec)
    assert [(a.rule_id, a.group_key, a.distinct) for a in pipe.alerts] == [
        ("FR-006", "org-retail", 50)
    ]
    # each record counted once: by its account-scope (FR-007) item
    assert (pipe.processed, pipe.duplicate) == (50, 0)
    assert pipe.matches == Counter({"FR-006": 50, "FR-007": 50})


# --- fired state only after flush (alert acknowledged before the window is written) ----------


def test_nothing_reaches_the_table_until_flush() -> None:
    pipe = Pipeline(flush=False)
    store = pipe.stage.store
    assert isinstance(store, TableWindowStore)
    (msg,) = pipe.messages(ev("f-1", "acct-metro-pd", "face.verify")).items()
    out = pipe.detect(*msg)
    assert [a.rule_id for a, _ in out.alerts] == ["FR-001"]
    assert pipe.table == {}, "a fired window must not be written before its alert is acked"
    key = wkey("FR-001", HOUR0, HOUR0 + HOUR_MS, "acct-metro-pd")
    assert list(store.pending) == [key]
    assert split_window_key(key) == (
        "FR-001",
        RULES.by_id("FR-001").state_version,
        HOUR0,
        HOUR0 + HOUR_MS,
        "acct-metro-pd",
    )
    store.flush()
    assert store.pending == {}
    # the value last: it counts only hashes its chunks already hold (a kill mid-flush)
    assert list(pipe.table) == [samples_key(key), ids_key(key, 0), key]
    assert pipe.table[ids_key(key, 0)] == [id_hash("f-1")]
    wire = pipe.table[key]
    value = WindowValue.from_wire(wire)
    assert value is not None and value.fired and value.count == 1 and wire["ic"] == 1
    assert value.alert is not None and (value.alert.revision, value.alert.status) == (0, "open")
    orjson.dumps(wire)  # the table's changelog holds plain JSON


def test_changelog_writes_per_event_are_bounded_by_a_constant() -> None:
    """SPEC 4.1: 5,000 enrolments into one FR-007 window write linearly, not quadratically."""
    written = [0]

    class Recording(dict[str, Any]):
        def __setitem__(self, key: str, value: Any) -> None:
            written[0] += len(orjson.dumps(key)) + len(orjson.dumps(value))
            super().__setitem__(key, value)

    pipe = Pipeline()
    pipe.stage = DetectStage(RULES, Recording(), PARTITIONS)
    per_thousand = []
    for i in range(5_000):
        pipe.feed(ev(f"enr-{i}", "acct-retail-east", "person_group.add_face", ts=HOUR0 + i))
        if i % 1000 == 999:
            per_thousand.append(written[0])
    deltas = [b - a for a, b in zip([0, *per_thousand], per_thousand, strict=False)]
    assert max(deltas[1:]) <= 1.2 * min(deltas[1:]), deltas  # linear: each 1000 costs alike
    # bytes per event, samples included (SPEC 4.1 asks for about 1 KB at most)
    assert written[0] / 5_000 < 1_000, written[0]
    state = sum(
        len(orjson.dumps(k)) + len(orjson.dumps(v)) for k, v in pipe.stage.store.table.items()
    )
    print(f"5,000 events: {written[0] / 5_000:.0f} changelog bytes per event, state {state} bytes")
    # and a restarted stage reads all 5,000 ids back: a redelivery is still recognised
    restarted = Pipeline()
    restarted.stage = DetectStage(RULES, pipe.stage.store.table, PARTITIONS)
    restarted.feed(ev("enr-17", "acct-retail-east", "person_group.add_face", ts=HOUR0 + 17))
    assert restarted.duplicate == 1
    # and its evidence samples, written once they were complete
    (key,) = [k for k in pipe.stage.store.table if not k.startswith("~")]
    samples = restarted.stage.store.get(key).samples  # type: ignore[union-attr]
    assert len(samples) == 10 and samples == pipe.stage.store.get(key).samples  # type: ignore[union-attr]


def test_failed_publish_before_flush_fires_again_on_reprocessing() -> None:
    """The agent drops the buffer when publishing fails: the alert is not lost."""
    pipe = Pipeline(flush=False)
    ((part, value),) = pipe.messages(ev("f-2", "acct-metro-pd", "face.verify")).items()
    first = pipe.detect(part, value)
    pipe.stage.store.pending.clear()  # what the agent does when the alert could not be sent
    again = pipe.detect(part, value)
    assert [a.alert_id for a, _ in again.alerts] == [a.alert_id for a, _ in first.alerts]
    assert again.processed == 1 and again.duplicate == 0
    pipe.stage.store.flush()
    third = pipe.detect(part, value)
    assert third.alerts == [] and (third.processed, third.duplicate) == (0, 1)


def test_buffered_state_is_read_before_the_table() -> None:
    pipe = Pipeline(flush=False)
    ((part, value),) = pipe.messages(ev("f-3", "acct-metro-pd", "face.verify")).items()
    pipe.detect(part, value)
    out = pipe.detect(part, value)  # a redelivery before the flush is still recognised
    assert out.alerts == [] and (out.processed, out.duplicate) == (0, 1)
    assert pipe.table == {}


# --- duplicate versus processed -------------------------------------------------------------


def test_redelivered_counted_item_is_a_duplicate() -> None:
    pipe = Pipeline()
    rec = ev("d-1", "acct-gallery", "person_group.add_face", image_count=1)
    first = pipe.feed(rec)
    again = pipe.feed(dict(rec, operation="face.identify"))  # same event_id, other fields
    assert [(o.processed, o.duplicate) for o in first] == [(1, 0)]
    # the redelivery now also has an org-scope copy (FR-006): it counts nothing
    assert sum(o.processed for o in again) == 0
    assert sum(o.duplicate for o in again) == 1
    assert sum(o.matches["FR-007"] for o in first + again) == 1
    assert pipe.alerts == []


def test_uncounted_items_are_neither_processed_nor_duplicate() -> None:
    pipe = Pipeline()
    rec = ev("d-2", "acct-retail-east", "face.identify", subject_ids=["s-1"])
    org_part = destination("org-retail", PARTITIONS)
    assert org_part != destination("acct-retail-east", PARTITIONS)
    for _ in range(2):
        messages = pipe.messages(rec)
        assert set(messages) == {org_part, destination("acct-retail-east", PARTITIONS)}
        out = pipe.detect(org_part, messages[org_part])
        assert (out.processed, out.duplicate) == (0, 0)
        assert out.error == 0 and out.dead_letters == []
    assert pipe.stage.store.get(wkey("FR-006", HOUR0, HOUR0 + HOUR_MS, "org-retail")) is not None


ORG_ONLY = b"""
version: 1
rules:
  - id: ORG-1
    title: org-wide identification
    clause: test
    severity: low
    match: {field: fr_kind, equals: identify}
    group_by: org_id
    window: 1h
    requires:
      - {kind: count, at_least: 2}
"""


def test_org_scope_item_is_counted_when_no_account_rule_matches() -> None:
    rules = parse_rules(ORG_ONLY, "org-only.yaml")
    pipe = Pipeline(rules)
    rec = ev("g-1", "acct-retail-east", "face.identify")
    (msg,) = pipe.messages(rec).items()
    item = orjson.loads(msg[1])["items"][0]
    assert (item["s"], item["c"]) == ("o", 1)
    out = pipe.detect(*msg)
    assert (out.processed, out.duplicate) == (1, 0)
    again = pipe.feed(rec)
    assert [(o.processed, o.duplicate) for o in again] == [(0, 1)]
    pipe.feed(ev("g-2", "acct-retail-west", "face.identify"))
    assert [(a.rule_id, a.group_key, a.count) for a in pipe.alerts] == [("ORG-1", "org-retail", 2)]


# --- expiry per partition -------------------------------------------------------------------


def _account_on(partition: int, avoid: set[str] = frozenset()) -> str:  # type: ignore[assignment]
    return next(
        a
        for a in (f"acct-p{partition}-{i}" for i in range(1000))
        if destination(a, PARTITIONS) == partition and a not in avoid
    )


def test_expired_keys_only_for_the_partition_and_more_than_24h_behind() -> None:
    pipe = Pipeline()
    target, other = 1, 2
    old = _account_on(target)
    edge = _account_on(target, {old})
    other_acct = _account_on(other)
    # unknown accounts doing face.verify: FR-008 (1h windows, account scope)
    pipe.feed(ev("x-old", old, "face.verify", ts=HOUR0))
    pipe.feed(ev("x-edge", edge, "face.verify", ts=HOUR0 + HOUR_MS))
    pipe.feed(ev("x-other", other_acct, "face.verify", ts=HOUR0))
    key_old = wkey("FR-008", HOUR0, HOUR0 + HOUR_MS, f"{old}")
    key_edge = wkey("FR-008", HOUR0 + HOUR_MS, HOUR0 + 2 * HOUR_MS, f"{edge}")
    key_other = wkey("FR-008", HOUR0, HOUR0 + HOUR_MS, f"{other_acct}")
    assert {key_old, key_edge, key_other} <= set(pipe.table)
    assert pipe.stage.expired_keys(target) == []
    # the target partition's event time moves to exactly 24h after the edge window's end
    late = _account_on(target, {old, edge})
    wm = HOUR0 + 2 * HOUR_MS + RETENTION_MS
    pipe.feed(ev("x-late", late, "face.verify", ts=wm))
    assert pipe.stage.clock(target) == wm
    expired = pipe.stage.expired_keys(target)
    assert len(expired) == len(set(expired)), f"a key is returned twice: {expired}"
    assert expired == [key_old]  # the edge window is exactly 24h behind: kept
    pipe.stage.store.drop(key_old)  # what the agent does with them
    # the other partition's old window is not this partition's to drop: it drops it itself
    # (its clock is the same low watermark of the one input partition)
    assert pipe.stage.expired_keys(other) == [key_other]
    pipe.stage.store.drop(key_other)
    pipe.feed(ev("x-later", late, "face.verify", ts=wm + 1))
    assert pipe.stage.expired_keys(target) == [key_edge]
    assert pipe.stage.expired_keys(other) == []


def test_expiry_run_like_the_detect_agent_deletes_each_key_once() -> None:
    """The agent deletes every returned key from the table after each stage-2 message."""
    pipe = Pipeline()
    acct = _account_on(0)
    for day in range(4):
        for hour in range(0, 24, 6):
            ts = HOUR0 + day * DAY_MS + hour * HOUR_MS
            for p, value in pipe.messages(
                ev(f"z-{day}-{hour}", acct, "face.verify", ts=ts)
            ).items():
                pipe.detect(p, value)
                pipe.advance(ts)
                for key in pipe.stage.expired_keys(p):
                    pipe.stage.store.drop(key)  # a KeyError here would stop the live agent
    wm = pipe.stage.clock(0)
    ends = sorted(split_window_key(k)[3] for k in pipe.table if not k.startswith("~"))
    assert ends and all(wm - end <= RETENTION_MS for end in ends)
    assert (
        len([k for k in pipe.table if not k.startswith("~")]) == 5
    )  # the windows of the last 24h (+ the one ending 24h ago)


def test_expired_keys_of_org_windows_follow_the_org_partition() -> None:
    pipe = Pipeline()
    for i in range(3):
        acct = "acct-retail-east" if i % 2 else "acct-retail-west"
        pipe.feed(ev(f"y-{i}", acct, "face.identify", ts=HOUR0, subject_ids=[f"s-{i}"]))
    org_key = wkey("FR-006", HOUR0, HOUR0 + HOUR_MS, "org-retail")
    assert org_key in pipe.table
    org_part = destination("org-retail", PARTITIONS)
    late = _account_on(org_part)
    pipe.feed(ev("y-late", late, "face.verify", ts=HOUR0 + 30 * HOUR_MS))
    assert org_key in pipe.stage.expired_keys(org_part)
    for p in range(PARTITIONS):
        if p != org_part:
            assert org_key not in pipe.stage.expired_keys(p)


# --- internal errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "corrupt",
    [
        {"s": "a", "e": {"event_id": "bad", "ts": "yesterday"}, "a": None, "k": 0, "c": 1},
        {"s": "x", "e": ev("bad", "acct-uni", "face.verify"), "a": None, "k": 0, "c": 1},
        {"s": "a", "e": ev("bad", "acct-uni", "face.verify"), "a": {"org_id": 1}, "k": 0, "c": 1},
    ],
    ids=["invalid-event", "unknown-scope", "broken-account"],
)
def test_corrupt_item_is_an_internal_error_and_the_next_item_goes_on(
    corrupt: dict[str, Any],
) -> None:
    pipe = Pipeline()
    ((_, good_value),) = pipe.messages(ev("ok-1", "acct-metro-pd", "face.verify")).items()
    good = orjson.loads(good_value)["items"]
    value = orjson.dumps({"items": [corrupt, *good]})
    out = pipe.stage.observe(value, DETECT_TOPIC, 3, 17)
    assert out.error == 1
    (dl,) = out.dead_letters
    assert (dl.rejection.reason, dl.rejection.field) == (INTERNAL_ERROR, None)
    assert dl.rejection.detail
    assert (dl.topic, dl.partition, dl.offset) == (DETECT_TOPIC, 3, 17)
    assert orjson.loads(dl.raw) == corrupt["e"]
    assert out.processed == 1
    assert [a.alert_id for a, _ in out.alerts] == [alert_id("FR-001", "acct-metro-pd", HOUR0)]


def test_corrupt_uncounted_item_counts_no_error() -> None:
    """An org-scope copy ("c": 0) was already counted by its account-scope item."""
    stage = DetectStage(RULES, {}, PARTITIONS)
    item = {"s": "o", "e": {"event_id": "bad"}, "a": None, "k": 0, "c": 0}
    out = stage.observe(orjson.dumps({"items": [item]}), DETECT_TOPIC, 0, 0)
    assert out.error == 0
    assert [d.rejection.reason for d in out.dead_letters] == [INTERNAL_ERROR]


def test_entries_by_rule_counts_table_states() -> None:
    pipe = Pipeline()
    for e in traffic(hours=1):
        pipe.feed(e)
    by_rule = pipe.stage.store.entries_by_rule()
    assert sum(by_rule.values()) == len([k for k in pipe.table if not k.startswith("~")])
    assert set(by_rule) <= {r.id for r in RULES.rules}
    assert by_rule["FR-006"] >= 1 and by_rule["FR-007"] >= 1


# --- the retention clock: the low watermark of the input partitions (SPEC 4.1) --------------


def test_low_watermark_waits_for_every_partition_and_leaves_out_idle_ones() -> None:
    from streams.app.detection import low_watermark

    assert low_watermark(3, {0: (500, False), 1: (100, False)}) is None  # 2 never reported
    assert low_watermark(3, {0: (500, False), 1: (100, False), 2: (900, False)}) == 100
    assert low_watermark(3, {0: (500, False), 1: (100, True), 2: (900, False)}) == 500
    assert low_watermark(2, {0: (500, True), 1: (100, True)}) == 500  # all read: the highest


def test_a_fast_input_partition_does_not_expire_windows_a_slow_one_still_feeds() -> None:
    """The round-1 bug: one input partition days ahead dropped the windows of a slower one."""
    stage = DetectStage(RULES, {}, PARTITIONS)
    acct = _account_on(1)
    first = Pipeline()
    (item,) = first.messages(ev("s-1", acct, "face.verify", ts=HOUR0)).values()
    stage.observe(item, DETECT_TOPIC, 1, 0)
    stage.store.flush()
    # input partition 0 is three days ahead; partition 1 (which feeds acct) is still at HOUR0
    stage.report(1, watermark_message(2, [(0, HOUR0 + 3 * DAY_MS, False)]))
    stage.report(1, watermark_message(2, [(1, HOUR0, False)]))
    assert stage.clock(1) == HOUR0
    assert stage.expired_keys(1) == []
    # once partition 1 goes idle, the clock is partition 0's and the window may go
    stage.report(1, watermark_message(2, [(1, HOUR0, True)]))
    assert stage.clock(1) == HOUR0 + 3 * DAY_MS
    assert stage.expired_keys(1) == [wkey("FR-008", HOUR0, HOUR0 + HOUR_MS, acct)]


def test_the_clock_never_moves_back_and_survives_a_restart() -> None:
    table: dict[str, Any] = {}
    stage = DetectStage(RULES, table, PARTITIONS)
    assert stage.report(2, watermark_message(1, [(0, 5_000, False)]))
    assert not stage.report(2, watermark_message(1, [(0, 4_000, False)]))
    assert stage.clock(2) == 5_000
    restarted = DetectStage(RULES, table, PARTITIONS)  # the table came back from its changelog
    assert restarted.clock(2) == 5_000
    assert not restarted.report(2, watermark_message(1, [(0, 1_000, False)]))
    assert restarted.clock(2) == 5_000
    assert restarted.clock(3) == 0


LATE_ACCT = "acct-visionapp"
LATE_PART = destination(LATE_ACCT, PARTITIONS)


def _late_burst(stage: DetectStage, acct: str, first_offset: int) -> list[Alert]:
    """Three FR-005 events of acct's window at HOUR0, observed and expired like the agent."""
    alerts: list[Alert] = []
    router = Pipeline().router
    for i in range(3):
        record = ev(
            f"late-{i}",
            acct,
            "chat.completions",
            ts=HOUR0 + 60_000 + i,
            image_count=1,
            intent={"label": "identify_person", "score": 0.93},
        )
        routed = router.route(orjson.dumps(record), "api.requests", 0, 0, 0, NOW)
        (value,) = (orjson.dumps({"items": its}) for its in routed.forwards.values())
        out = stage.observe(value, DETECT_TOPIC, LATE_PART, first_offset + i)
        stage.store.flush()
        alerts.extend(a for a, _ in out.alerts)
        for key in stage.expired_keys(LATE_PART):
            stage.store.drop(key)
    return alerts


def test_late_events_beyond_retention_count_together_until_the_clock_moves() -> None:
    """SPEC 4.1, as replay does it (Detector.expire): a window a late event starts beyond
    retention is swept when the clock next moves, not after each message, so a late burst of
    one window fires a count >= 3 rule; a restart in the middle changes nothing."""
    acct = LATE_ACCT
    table: dict[str, Any] = {}
    stage = DetectStage(RULES, table, PARTITIONS)
    stage.report(LATE_PART, watermark_message(1, [(0, HOUR0 + 3 * DAY_MS, False)]))
    assert stage.expired_keys(LATE_PART) == []
    (alert,) = _late_burst(stage, acct, 0)
    assert alert.window_start_ms == HOUR0 and alert.count == 3
    # a restart between late events: the clock as kept was swept already
    table2: dict[str, Any] = {}
    stage = DetectStage(RULES, table2, PARTITIONS)
    stage.report(LATE_PART, watermark_message(1, [(0, HOUR0 + 3 * DAY_MS, False)]))
    _late_burst(stage, acct, 0)
    restarted = DetectStage(RULES, table2, PARTITIONS)
    assert restarted.expired_keys(LATE_PART) == []
    key = wkey("FR-005", HOUR0, HOUR0 + HOUR_MS, acct)
    assert key in table2
    # the clock moves: the late window goes
    restarted.report(LATE_PART, watermark_message(1, [(0, HOUR0 + 3 * DAY_MS + 1, False)]))
    assert key in restarted.expired_keys(LATE_PART)


def test_state_of_a_changed_rule_is_never_read_and_never_an_error() -> None:
    """SPEC 4.3: a rule whose definition changed starts its windows afresh."""
    text = builtin_rules_bytes().decode()
    changed = parse_rules(text.replace("at_least: 20", "at_least: 3").encode(), "changed.yaml")
    assert changed.by_id("FR-007").version != RULES.by_id("FR-007").version
    assert changed.by_id("FR-005").version == RULES.by_id("FR-005").version
    table: dict[str, Any] = {}
    before = Pipeline()
    before.stage = DetectStage(RULES, table, PARTITIONS)
    acct = "acct-retail-east"
    for i in range(2):
        before.feed(ev(f"w-{i}", acct, "person_group.add_face", ts=HOUR0 + i))
    after = Pipeline(rules=changed)
    after.stage = DetectStage(changed, table, PARTITIONS)
    for i in range(2, 5):
        after.feed(ev(f"w-{i}", acct, "person_group.add_face", ts=HOUR0 + i))
    after.feed(ev("w-id", acct, "face.identify", ts=HOUR0 + 9))
    assert after.error == 0
    # counted afresh: 3 enrolments under the new version (the 2 before do not count)
    (alert,) = [a for a in after.alerts if a.rule_id == "FR-007"]
    assert alert.count == 4


# --- the alert lifecycle live (SPEC 5): closing by the detect partition's clock --------------


def test_a_fired_window_closes_when_its_partitions_clock_passes_end_plus_close_after() -> None:
    pipe = Pipeline()
    acct = "acct-metro-pd"
    part = destination(acct, PARTITIONS)
    for i in range(12):
        pipe.feed(ev(f"le-{i}", acct, "face.verify", ts=HOUR0 + i))
    assert [a.status for a in pipe.alerts] == ["open"]
    key = wkey("FR-001", HOUR0, HOUR0 + HOUR_MS, acct)
    # the clock at the window's end + 5m - 1: nothing closes
    pipe.advance(HOUR0 + HOUR_MS + 5 * 60_000 - 1)
    assert pipe.stage.sweep(part).revisions == []
    pipe.advance(HOUR0 + HOUR_MS + 5 * 60_000)
    swept = pipe.stage.sweep(part)
    assert [(a.alert_id, a.status, a.revision, a.count) for a in swept.revisions] == [
        (alert_id("FR-001", acct, HOUR0), "closed", 2, 12)  # open 0, update 1 (at 10), closed 2
    ]
    # recorded only once flushed (after the revision was acknowledged)
    assert WindowValue.from_wire(pipe.table[key]).alert.status == "update"  # type: ignore[union-attr]
    pipe.stage.store.flush()
    assert WindowValue.from_wire(pipe.table[key]).alert.status == "closed"  # type: ignore[union-attr]
    # a restart on the same table does not close it again
    restarted = DetectStage(RULES, pipe.table, PARTITIONS)
    assert restarted.sweep(part).revisions == []


def test_a_closed_revision_not_recorded_before_a_crash_is_sent_again_after_restart() -> None:
    pipe = Pipeline()
    acct = "acct-metro-pd"
    part = destination(acct, PARTITIONS)
    pipe.feed(ev("le-0", acct, "face.verify", ts=HOUR0))
    pipe.advance(HOUR0 + 2 * HOUR_MS)
    assert [a.status for a in pipe.stage.sweep(part).revisions] == ["closed"]
    pipe.stage.store.pending.clear()  # killed before the flush: the clock was kept, not the close
    restarted = DetectStage(RULES, pipe.table, PARTITIONS)
    assert [(a.status, a.revision) for a in restarted.sweep(part).revisions] == [("closed", 1)]


def test_a_window_state_of_an_older_shape_is_ignored_never_an_error() -> None:
    pipe = Pipeline()
    acct = "acct-metro-pd"
    key = wkey("FR-001", HOUR0, HOUR0 + HOUR_MS, acct)
    # a v1 value (no "v"): fired, so it would stop this window from alerting
    pipe.table[key] = {"f": True, "n": 1, "ic": 1, "c": [1], "d": [None], "s": []}
    pipe.table[ids_key(key, 0)] = [id_hash("old")]
    (out,) = pipe.feed(ev("new-1", acct, "face.verify", ts=HOUR0 + 5))
    assert out.error == 0
    assert [a.rule_id for a, _ in out.alerts] == ["FR-001"]
    assert pipe.table[key]["v"] == 2


def test_detect_trusts_the_rules_ingest_matched_only_under_the_same_rules() -> None:
    """A version-1 message routed under the rules in force is not matched again; one routed
    under other rules (around a change) or without a version is."""
    pipe = Pipeline()
    ((part, value),) = pipe.messages(ev("fr-1", "acct-metro-pd", "face.verify")).items()
    msg = orjson.loads(value)
    assert msg["v"] == 1 and msg["rules"] == RULES.sha256
    hollow = [{**it, "r": []} for it in msg["items"]]  # as if ingest had matched nothing

    def alerts(envelope: dict[str, Any]) -> list[str]:
        stage = DetectStage(RULES, {}, PARTITIONS)
        out = stage.observe(orjson.dumps(envelope), DETECT_TOPIC, part, 0)
        assert not out.dead_letters
        return [a.rule_id for a, _ in out.alerts]

    assert "FR-001" in alerts(msg)
    assert alerts({**msg, "items": hollow}) == []  # trusted: no second classification
    assert "FR-001" in alerts({**msg, "items": hollow, "rules": "0" * 64})
    assert "FR-001" in alerts({"items": hollow})


def test_a_forwards_message_of_an_unknown_version_is_dead_lettered_whole() -> None:
    stage = DetectStage(RULES, {}, PARTITIONS)
    out = stage.observe(b'{"items":[],"v":9,"rules":""}', DETECT_TOPIC, 1, 5)
    (dl,) = out.dead_letters
    assert dl.rejection.reason == INTERNAL_ERROR
    assert "version 9" in dl.rejection.detail
    assert (dl.partition, dl.offset) == (1, 5)


def test_a_flush_cut_short_by_a_kill_reads_back_as_before_it() -> None:
    """Chunks are written before their value and read only up to its counts: a worker killed
    mid-flush loses nothing when the flush's events are processed again (kill -9, SPEC 5)."""

    class Killed(Exception):
        pass

    class DiesAtTheValue(dict[str, Any]):
        armed = False

        def __setitem__(self, key: str, value: Any) -> None:
            if self.armed and not key.startswith("~"):
                raise Killed(key)
            super().__setitem__(key, value)

    def subjects(i: int) -> dict[str, Any]:
        return ev(f"id-{i}", "acct-retail-east", "face.identify", subject_ids=[f"s-{i}"])

    table = DiesAtTheValue()
    pipe = Pipeline()
    pipe.stage = DetectStage(RULES, table, PARTITIONS)
    for i in range(70):
        pipe.feed(subjects(i))
    table.armed = True
    with pytest.raises(Killed):
        pipe.feed(subjects(70))  # its chunks reach the table, its value does not
    table.armed = False
    restarted = Pipeline()
    restarted.stage = DetectStage(RULES, table, PARTITIONS)
    restarted.feed(subjects(70))  # processed again after the restart
    key = wkey("FR-006", HOUR0, HOUR0 + HOUR_MS, "org-retail")
    value = WindowValue.from_wire(table[key])
    assert value is not None and (value.count, value.distinct) == (71, [71])
    assert restarted.duplicate == 0
