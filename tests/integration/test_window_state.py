"""Window state you can trust (SPEC 4.1, 4.3), on a real broker, in the hard order.

Every test here publishes its traffic *before* the worker starts (or while it is down), so
the worker catches up on a backlog whose input partitions advance at different speeds: the
order in which round 1 lost alerts.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from scenarios import scenario_archive, write_jsonl
from worker_harness import (
    Worker,
    alert_ids_on_topic,
    frwatch,
    frwatch_env,
    read_topic,
    replay_alerts,
    wait_for,
)

from streams.core.classify import EnrichedEvent
from streams.core.engine import Detector
from streams.core.rules import builtin_rules_bytes, load_rules
from streams.core.state import MemoryWindowStore
from streams.core.windows import RETENTION_MS
from streams.replay import load_accounts
from topics.requests import RequestEvent, decode_request_message, parse_event_time

pytestmark = pytest.mark.integration

REQUEST_PARTITIONS = 4
HOURS = 50  # three UTC days of event time: day windows (FR-007) expire behind the clock


def _partition_of(account_id: str) -> int:
    """The requests partition `frwatch publish` sends an account's records to (Kafka's own)."""
    return (murmur2(account_id.encode()) & 0x7FFFFFFF) % REQUEST_PARTITIONS


def _event_time(line: bytes, default: int) -> int:
    """A line's event time (a batch line's: its earliest record's), else `default`."""
    try:
        obj = orjson.loads(line)
        records = obj.get("records") if isinstance(obj, dict) else None
        rows = records if isinstance(records, list) else [obj]
        times = [int(parse_event_time(r["ts"])) for r in rows if isinstance(r, dict) and "ts" in r]
    except Exception:  # not JSON, or a ts that does not parse: malformed
        return default
    return min(times, default=default)


def _prepare(bootstrap: str, name: str, tmp: Path) -> tuple[dict[str, str], Path, Path]:
    env = frwatch_env(bootstrap, name)
    accounts, scenario = scenario_archive(tmp, hours=HOURS)
    # an archive as a requests topic holds it: in arrival order, roughly by event time, so
    # that no record is more than 24h behind the records before it (beyond that, live and
    # replay need not agree: SPEC 4.1 promises order independence only within the 24h).
    # A batch line goes by its records' time: placed by the line before it, its 3 records of
    # the last hour ran ~50 h ahead of everything after them, replay's clock jumped there,
    # and live (whose result then depends on how fast each partition is read) had extra
    # FR-005 and FR-006 alerts. A malformed line keeps its place after the line before it.
    keyed, last = [], 0
    for line in scenario.read_bytes().splitlines():
        last = _event_time(line, last)
        keyed.append((last, line))
    keyed.sort(key=lambda k: k[0])
    events = write_jsonl(tmp / "ordered.jsonl", [line for _, line in keyed])
    highest = 0
    for _, line in keyed:
        for rec in decode_request_message(line):
            if isinstance(rec, RequestEvent):
                assert highest - rec.ts_ms <= RETENTION_MS, "a record beyond retention"
                highest = max(highest, rec.ts_ms)
    frwatch(["topics", "create"], env)
    frwatch(["accounts", "load", str(accounts)], env)
    return env, accounts, events


def _live_alert_ids(
    bootstrap: str,
    env: dict[str, str],
    worker: Worker,
    want: set[str],
    described: dict[str, Any] | None = None,
) -> None:
    try:
        wait_for(
            lambda: set(alert_ids_on_topic(bootstrap, env["FRWATCH_TOPIC_ALERTS"])) >= want,
            120,
            "every replay alert on the topic",
            worker,
        )
    except AssertionError as exc:
        missing = want - set(alert_ids_on_topic(bootstrap, env["FRWATCH_TOPIC_ALERTS"]))
        shown = [(described or {}).get(a, a) for a in sorted(missing)[:8]]
        raise AssertionError(f"replay alerts missing live: {len(missing)} {shown}: {exc}") from None
    live = set(alert_ids_on_topic(bootstrap, env["FRWATCH_TOPIC_ALERTS"]))
    extra = [
        (a["rule_id"], a["group_key"], a["window"]["start"], a["observed"])
        for _, v in read_topic(bootstrap, env["FRWATCH_TOPIC_ALERTS"])
        if v and (a := orjson.loads(v))["alert_id"] in live - want
    ]
    assert live == want, f"extra live alerts: {extra[:8]}"


def test_a_rule_changed_between_runs_starts_afresh_without_errors(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """SPEC 4.3: restart with FR-007 changed: no internal_error; unchanged rules continue."""
    env, _accounts, events = _prepare(kafka_bootstrap, unique_name, tmp_path)
    lines = events.read_bytes().splitlines()
    half = len(lines) // 2
    first = write_jsonl(tmp_path / "first.jsonl", lines[:half])
    second = write_jsonl(tmp_path / "second.jsonl", lines[half:])
    frwatch(["publish", str(first)], env)
    worker = Worker(env, tmp_path / "w1").start()
    try:
        wait_for(lambda: worker.records_counted() >= half, 300, "first half counted", worker)
    finally:
        worker.stop()
    changed = tmp_path / "changed.yaml"
    text = builtin_rules_bytes().decode()
    assert text.count("at_least: 20") == 1
    changed.write_text(text.replace("at_least: 20", "at_least: 25"))
    env2 = dict(env, FRWATCH_RULES=str(changed))
    frwatch(["publish", str(second)], env2)
    worker = Worker(env2, tmp_path / "w2").start()
    try:
        wait_for(
            lambda: worker.records_counted() >= len(lines) - half,
            300,
            "second half counted",
            worker,
        )
        assert worker.metric("frwatch_events_total", result="error") == 0
    finally:
        worker.stop()
    reasons = [
        orjson.loads(v).get("reason")
        for _, v in read_topic(kafka_bootstrap, env["FRWATCH_TOPIC_DLQ"])
        if v
    ]
    assert "internal_error" not in reasons


# --- live equals replay, in the hard orders -------------------------------------------------


def _replay_ids(archive: Path, accounts: Path, env: dict[str, str]) -> tuple[dict[str, Any], int]:
    """Replay's alert ids (with rule, group, window start and observed) and records read."""
    expected, summary = replay_alerts(archive, accounts, env)
    ids = {
        a["alert_id"]: (a["rule_id"], a["group_key"], a["window"]["start"], a["observed"])
        for a in expected
    }
    return ids, int(summary["events"])


def _held_after_replay(archive: Path, accounts: Path) -> tuple[int, int]:
    """Window states the replay core holds at the end of the archive, and states it made."""
    store = MemoryWindowStore()
    made: set[str] = set()
    put = store.put

    def counting_put(key: str, state: Any) -> None:
        made.add(key)
        put(key, state)

    store.put = counting_put  # type: ignore[method-assign]
    detector = Detector(load_rules(), store)
    directory = load_accounts(str(accounts), lambda _: None)
    for line in archive.read_bytes().splitlines():
        for rec in decode_request_message(line):
            if isinstance(rec, RequestEvent):
                detector.observe(
                    EnrichedEvent(
                        rec, directory.get(rec.account_id), detector.rule_set.classification
                    )
                )
                detector.expire()
    return len(store), len(made)


def _records(lines: list[bytes]) -> list[bytes]:
    """Lines with batch lines split into their records (each then keyed by its account)."""
    out: list[bytes] = []
    for line in lines:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            out.append(line)
            continue
        if isinstance(obj, dict) and isinstance(obj.get("records"), list) and obj["records"]:
            out.extend(orjson.dumps(r) for r in obj["records"])
        else:
            out.append(line)
    return out


def _input_partition(line: bytes) -> int | None:
    """The partition `frwatch publish` (no --batch) sends a line to; None: unkeyed (random)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    acct = obj.get("account_id") if isinstance(obj, dict) else None
    return _partition_of(acct) if isinstance(acct, str) else None


def _alert_messages(bootstrap: str, env: dict[str, str]) -> int:
    return len(alert_ids_on_topic(bootstrap, env["FRWATCH_TOPIC_ALERTS"]))


def test_backlog_published_first_gives_exactly_the_replay_alerts(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """50 h published in batches of 50 before the worker starts: the 4 input partitions are
    caught up at different speeds, and the one batch line runs ~50 h ahead of the rest."""
    env, accounts, events = _prepare(kafka_bootstrap, unique_name, tmp_path)
    want, n = _replay_ids(events, accounts, env)
    assert {"FR-005", "FR-006", "FR-007"} <= {rule for rule, *_ in want.values()}
    frwatch(["publish", "--batch", "50", str(events)], env)
    worker = Worker(env, tmp_path / "w").start()
    try:
        wait_for(lambda: worker.records_counted() >= n, 150, "every record counted", worker)
        _live_alert_ids(kafka_bootstrap, env, worker, set(want), want)
        assert worker.records_counted() == n
        print(
            f"\nbacklog: {len(want)} replay alert ids, live {len(want)} ids "
            f"in {_alert_messages(kafka_bootstrap, env)} messages"
        )
    finally:
        worker.stop()


LATE = _partition_of("acct-visionapp")  # also FR-003, -004, -006, -007, -008's accounts
EARLY_HOURS = 2
HOUR_MS = 3_600_000


def _ts(line: bytes) -> int | None:
    try:
        obj = orjson.loads(line)
        return int(parse_event_time(obj["ts"]))
    except Exception:
        return None


def _clocks(bootstrap: str, env: dict[str, str]) -> dict[int, list[int]]:
    """Every retention clock each detect partition wrote to the window changelog, in order."""
    out: dict[int, list[int]] = {}
    topic = f"{env['FRWATCH_APP_ID']}-windows-changelog"
    for key, value in read_topic(bootstrap, topic):
        name = orjson.loads(key) if key else None
        if isinstance(name, str) and name.startswith("~clock|") and value:
            out.setdefault(int(name.split("|")[1]), []).append(orjson.loads(value)["clock"])
    return out


def _clock_at_least(bootstrap: str, env: dict[str, str], ms: int) -> bool:
    clocks = _clocks(bootstrap, env)
    return len(clocks) == REQUEST_PARTITIONS and all(c[-1] >= ms for c in clocks.values())


@pytest.mark.parametrize(
    "late_after",
    ["held", "idle"],
    ids=["held-back-by-the-late-partition", "after-it-was-left-out-as-idle"],
)
def test_a_partition_published_days_later_gives_exactly_the_replay_alerts(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, late_after: str
) -> None:
    """Skew: one input partition's records arrive after the others were read to their end,
    so the worker sees partitions days apart in event time.

    held: that partition had sent its first 2 hours and holds the clock back (SPEC 4.1: the
    low watermark) until it catches up: nothing it needs is dropped.
    idle: it had sent nothing and was left out as idle, so the clock is ~50 h ahead when its
    records come: each is beyond retention, and its windows count as replay's do (a window
    a late event starts lives until the clock next moves).
    Either way live equals replay, of the records in the order published and in event order.
    """
    env, accounts, events = _prepare(kafka_bootstrap, unique_name, tmp_path)
    if late_after == "idle":
        env["FRWATCH_IDLE_AFTER"] = "3"
    lines = _records(events.read_bytes().splitlines())
    first_ts = min(t for t in map(_ts, lines) if t is not None)
    cut = first_ts - first_ts % HOUR_MS + (EARLY_HOURS * HOUR_MS if late_after == "held" else 0)

    def late(line: bytes) -> bool:
        ts = _ts(line)
        return _input_partition(line) == LATE and ts is not None and ts >= cut

    early_lines = [x for x in lines if not late(x)]
    late_lines = [x for x in lines if late(x)]
    early = write_jsonl(tmp_path / "early.jsonl", early_lines)
    rest = write_jsonl(tmp_path / "late.jsonl", late_lines)
    published = write_jsonl(tmp_path / "published.jsonl", early_lines + late_lines)
    want, n = _replay_ids(published, accounts, env)
    in_order, _ = _replay_ids(events, accounts, env)
    assert set(want) == set(in_order)  # the order of the replay's input does not matter here
    # the clock the early records alone give: the lowest of the other partitions' highest
    highest: dict[int, int] = {}
    for line in early_lines:
        p, ts = _input_partition(line), _ts(line)
        if p is not None and p != LATE and ts is not None:
            highest[p] = max(highest.get(p, 0), ts)
    frwatch(["publish", str(early)], env)
    worker = Worker(env, tmp_path / "w").start()
    try:
        n_early = n - len(late_lines)
        wait_for(lambda: worker.records_counted() >= n_early, 150, "the early records", worker)
        if late_after == "idle":  # the late partition is left out: the clock is ~50 h ahead
            wait_for(
                lambda: _clock_at_least(kafka_bootstrap, env, min(highest.values())),
                60,
                "the clock past the other partitions' records",
                worker,
            )
        else:  # it holds the clock back at its first 2 hours
            clocks = _clocks(kafka_bootstrap, env)
            assert all(c[-1] < cut for c in clocks.values()), clocks
        frwatch(["publish", str(rest)], env)
        wait_for(lambda: worker.records_counted() >= n, 150, "every record counted", worker)
        _live_alert_ids(kafka_bootstrap, env, worker, set(want), want)
        print(
            f"\nskew ({late_after}): {len(want)} replay alert ids, live {len(want)} ids in "
            f"{_alert_messages(kafka_bootstrap, env)} messages; {len(late_lines)} records of "
            f"partition {LATE} published late"
        )
    finally:
        worker.stop()


IDLE = _partition_of("acct-clinic")  # background load only: every rule still fires


def _send(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for key, value in messages:
                await producer.send_and_wait(topic, value, key=key)
        finally:
            await producer.stop()

    asyncio.run(run())


def test_an_idle_partition_does_not_stop_state_from_expiring(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """One input partition receives nothing; while the others keep receiving records, the
    clock leaves it out (SPEC 4.1) and window state expires down to what replay holds."""
    env, accounts, events = _prepare(kafka_bootstrap, unique_name, tmp_path)
    env["FRWATCH_IDLE_AFTER"] = "5"
    lines = [
        x
        for x in _records(events.read_bytes().splitlines())
        if _input_partition(x) not in (None, IDLE)
    ]
    archive = write_jsonl(tmp_path / "busy.jsonl", lines)
    want, n = _replay_ids(archive, accounts, env)
    held, made = _held_after_replay(archive, accounts)
    last = max(t for t in map(_ts, lines) if t is not None)
    assert made - held > made // 3  # states of the first day expire behind the clock
    busy = {
        p: a
        for a in ("acct-bank-kyc", "acct-visionapp", "acct-metro-pd", "acct-uni")
        if (p := _partition_of(a)) != IDLE
    }
    assert len(busy) == REQUEST_PARTITIONS - 1
    frwatch(["publish", str(archive)], env)
    worker = Worker(env, tmp_path / "w").start()
    ticks = 0

    def steady_and_expired() -> bool:
        # from the start, the busy partitions keep receiving records (at the archive's last
        # event time, matching no rule), so none of them is idle: only IDLE is left out
        nonlocal ticks
        ticks += 1
        _send(
            kafka_bootstrap,
            env["FRWATCH_TOPIC_REQUESTS"],
            [
                (
                    acct.encode(),
                    orjson.dumps(
                        {
                            "event_id": f"tick-{ticks}-{p}",
                            "ts": last,
                            "account_id": acct,
                            "operation": "embeddings",
                        }
                    ),
                )
                for p, acct in busy.items()
            ],
        )
        return (
            worker.records_counted() >= n
            and _clock_at_least(kafka_bootstrap, env, last)
            and worker.metric("frwatch_window_state_entries") == held
        )

    try:
        wait_for(
            steady_and_expired,
            90,
            f"the clock at the last event time, window state down to replay's {held}",
            worker,
        )
        _live_alert_ids(kafka_bootstrap, env, worker, set(want), want)
        print(
            f"\nidle partition {IDLE}: {len(want)} replay alert ids, live {len(want)} ids in "
            f"{_alert_messages(kafka_bootstrap, env)} messages; window states held "
            f"{held} (replay) = live of {made} made, {ticks} tick rounds"
        )
    finally:
        worker.stop()


def test_a_killed_worker_restarts_with_its_clock_and_drops_nothing_early(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """kill -9 mid-backlog, restart: the clock comes back from the window table and never
    moves back; no state is dropped early, so the alerts are exactly replay's."""
    env, accounts, events = _prepare(kafka_bootstrap, unique_name, tmp_path)
    want, n = _replay_ids(events, accounts, env)
    frwatch(["publish", str(events)], env)
    first = Worker(env, tmp_path / "w1").start()
    wait_for(
        lambda: (
            first.records_counted() >= n // 3
            and any(c[-1] > 0 for c in _clocks(kafka_bootstrap, env).values())
        ),
        150,
        "a third of the records and a clock",
        first,
    )
    first.kill(signal.SIGKILL)
    before = _clocks(kafka_bootstrap, env)
    partial = set(alert_ids_on_topic(kafka_bootstrap, env["FRWATCH_TOPIC_ALERTS"]))
    assert len(partial) < len(want), "the kill must land mid-archive"
    # started again as it ran (directory and address): the same static group member takes
    # its partitions back at once
    second = first.start()
    try:
        wait_for(
            lambda: (
                set(alert_ids_on_topic(kafka_bootstrap, env["FRWATCH_TOPIC_ALERTS"])) >= set(want)
            ),
            240,
            "the replay alerts after the restart",
            second,
        )
        _live_alert_ids(kafka_bootstrap, env, second, set(want), want)
    finally:
        second.stop()
    after = _clocks(kafka_bootstrap, env)
    for p, seq in after.items():
        assert seq == sorted(seq), f"detect partition {p}'s clock moved back: {seq}"
        assert seq[: len(before.get(p, []))] == before.get(p, [])
    print(
        f"\nrestart: {len(want)} replay alert ids, live {len(want)} ids in "
        f"{_alert_messages(kafka_bootstrap, env)} messages; {len(partial)} before the kill; "
        f"clocks before {[before.get(p, [0])[-1] for p in range(REQUEST_PARTITIONS)]}, "
        f"after {[after[p][-1] for p in sorted(after)]}"
    )


def test_changelog_bytes_grow_linearly_with_the_events_of_one_window(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """SPEC 4.1: 50,000 enrolments into one FR-007 window (it never fires: no identification)
    write less than 1 KB per event to the window changelog, read back with a real consumer.
    The window's ids before the fix were one value rewritten at every flush: quadratic."""
    events_n = 50_000
    env = frwatch_env(kafka_bootstrap, unique_name)
    frwatch(["topics", "create"], env)
    hour = (int(time.time() * 1000) - 90 * 60_000) // HOUR_MS * HOUR_MS
    archive = write_jsonl(
        tmp_path / "enrolments.jsonl",
        [
            {
                "event_id": f"en-{i}",
                "ts": hour + i // 20,
                "account_id": "acct-one-window",
                "operation": "face_list.add_face",
            }
            for i in range(events_n)
        ],
    )
    frwatch(["publish", "--batch", "100", str(archive)], env, timeout=300)
    worker = Worker(env, tmp_path / "w").start()
    try:
        wait_for(lambda: worker.records_counted() >= events_n, 300, "every enrolment", worker)
        assert worker.metric("frwatch_rule_matches_total", rule_id="FR-007") == events_n
    finally:
        worker.stop()  # a clean stop flushes the table's last writes to the changelog
    topic = f"{env['FRWATCH_APP_ID']}-windows-changelog"
    records = read_topic(kafka_bootstrap, topic, max_s=120)
    written = sum(len(k or b"") + len(v or b"") for k, v in records)
    window = [k for k, _ in records if k and b"FR-007|" in k and b"~" not in k[:3]]
    per_event = written / events_n
    print(
        f"\nchangelog: {len(records)} records, {written} bytes for {events_n} events in one "
        f"window: {per_event:.0f} B/event ({len(window)} writes of the window's own value)"
    )
    assert per_event < 1024
