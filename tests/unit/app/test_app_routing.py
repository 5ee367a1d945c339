"""Stage 1 (`streams.app.routing.Router.route`): validation, DLQ records, enrichment, routing.

Every test runs twice: screened here (`Router.route`), and screened as a screening process
does it, its `Screened` sent over the wire and routed by the worker (`Router.route_screened`).
Pure: no Faust, no Kafka. SPEC 1 (account_id from the value), 2 (batches), 2.3 (DLQ records,
future_timestamp, internal_error), 3 (enrichment), 7 (what each record is counted as).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

import orjson
import pytest

from streams.app.routing import FUTURE_TOLERANCE_MS, Routed, Router, Screened, destination
from streams.core.classify import EnrichedEvent
from streams.core.engine import group_key
from streams.core.rules import RuleSet, builtin_classification, load_rules
from streams.synthetic import DEFAULT_START_MS, demo_traffic, sample_directory
from topics.accounts import AccountDirectory, AccountRecord
from topics.dlq import (
    FUTURE_TIMESTAMP,
    INTERNAL_ERROR,
    MISSING_FIELD,
    NOT_JSON,
    NOT_OBJECT,
    OUT_OF_RANGE,
    WRONG_TYPE,
)
from topics.requests import RequestEvent, parse_request_record

TOPIC = "api.requests"
PARTITIONS = 8
NOW = DEFAULT_START_MS + 3_600_000  # the wall clock, one hour after the events
KAFKA_TS = NOW - 1_000
RULES = load_rules()


def directory() -> AccountDirectory:
    return sample_directory()


def router(rules: RuleSet = RULES) -> Router:
    return Router(rules, directory(), PARTITIONS)


def event(
    event_id: str = "e-1",
    account_id: str = "acct-uni",
    operation: str = "chat.completions",
    ts: Any = DEFAULT_START_MS,
    **fields: Any,
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "ts": ts,
        "account_id": account_id,
        "operation": operation,
        **fields,
    }


SCREENED_WHERE = ["here"]


@pytest.fixture(autouse=True, params=["here", "over-the-wire"])
def screened_where(request: pytest.FixtureRequest) -> Any:
    SCREENED_WHERE[0] = request.param
    yield request.param
    SCREENED_WHERE[0] = "here"


def route(r: Router, value: Any, partition: int = 3, offset: int = 42, now_ms: int = NOW) -> Routed:
    data = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
    if SCREENED_WHERE[0] == "here":
        return r.route(data, TOPIC, partition, offset, KAFKA_TS, now_ms)
    wire = r.screen.screen(data, now_ms).to_wire()
    return r.route_screened(
        Screened.from_wire(wire), data, TOPIC, partition, offset, KAFKA_TS, now_ms
    )


def items(out: Routed) -> list[dict[str, Any]]:
    return [item for part in sorted(out.forwards) for item in out.forwards[part]]


def counts(out: Routed) -> dict[str, int]:
    return {
        "processed": out.processed,
        "malformed": out.malformed,
        "rejected": out.rejected,
        "error": out.error,
        "hits": out.hits,
        "misses": out.misses,
    }


# --- malformed input (SPEC 2.3) -------------------------------------------------------------

MALFORMED = [
    (b"this is not json", NOT_JSON, None),
    (b"", NOT_JSON, None),
    (b"[1, 2, 3]", NOT_OBJECT, None),
    (b'"a string"', NOT_OBJECT, None),
    (
        orjson.dumps({k: v for k, v in event().items() if k != "event_id"}),
        MISSING_FIELD,
        "event_id",
    ),
    (orjson.dumps({k: v for k, v in event().items() if k != "ts"}), MISSING_FIELD, "ts"),
    (orjson.dumps(event(ts=True)), WRONG_TYPE, "ts"),
    (orjson.dumps(event(ts="2026-11-18T07:00:00")), WRONG_TYPE, "ts"),
    (orjson.dumps(event(image_count=1.0)), WRONG_TYPE, "image_count"),
    (orjson.dumps(event(image_count=-1)), OUT_OF_RANGE, "image_count"),
    (orjson.dumps(event(event_id="x" * 129)), OUT_OF_RANGE, "event_id"),
    (orjson.dumps(event(account_id="")), OUT_OF_RANGE, "account_id"),
    (b'{"records": "nope"}', WRONG_TYPE, "records"),
]


@pytest.mark.parametrize(("raw", "reason", "field"), MALFORMED)
def test_malformed_record_becomes_a_dead_letter_with_its_origin(
    raw: bytes, reason: str, field: str | None
) -> None:
    out = route(router(), raw, partition=5, offset=1234)
    assert counts(out) == {**counts(Routed()), "malformed": 1}
    assert out.forwards == {} and out.event_ts_ms == []
    (dl,) = out.dead_letters
    assert (dl.rejection.reason, dl.rejection.field) == (reason, field)
    assert dl.rejection.detail
    assert dl.raw == raw.decode()
    assert (dl.topic, dl.partition, dl.offset) == (TOPIC, 5, 1234)
    doc = orjson.loads(dl.to_json())
    assert set(doc) == {
        "reason",
        "field",
        "detail",
        "raw",
        "raw_truncated",
        "raw_bytes",
        "raw_sha256",
        "topic",
        "partition",
        "offset",
    }
    assert doc["raw"] == raw.decode() and doc["offset"] == 1234


def test_a_null_message_value_is_one_malformed_record() -> None:
    out = route(router(), None)
    assert out.malformed == 1
    assert out.dead_letters[0].rejection.reason == NOT_JSON


def test_batch_records_are_dead_lettered_one_by_one_and_the_rest_go_on() -> None:
    good = event("ok-1", "acct-metro-pd", "face.verify")
    batch = {"records": [7, {"event_id": "bad-3"}, good, {"records": []}]}
    out = route(router(), batch, partition=2, offset=9)
    assert out.malformed == 3
    reasons = [(d.rejection.reason, d.rejection.field) for d in out.dead_letters]
    assert reasons == [(NOT_OBJECT, None), (MISSING_FIELD, "ts"), (MISSING_FIELD, "event_id")]
    # each dead letter carries its own record as text, and the message it came in
    assert [orjson.loads(d.raw) for d in out.dead_letters] == [
        7,
        {"event_id": "bad-3"},
        {"records": []},
    ]
    assert {(d.topic, d.partition, d.offset) for d in out.dead_letters} == {(TOPIC, 2, 9)}
    assert [i["e"]["event_id"] for i in items(out)] == ["ok-1"]


def test_an_empty_batch_holds_no_record() -> None:
    out = route(router(), {"records": []})
    assert counts(out) == counts(Routed()) and out.dead_letters == [] and out.forwards == {}


# --- future timestamps (SPEC 2.3, live only) ------------------------------------------------


def test_ts_more_than_five_minutes_ahead_is_rejected_with_field_ts() -> None:
    ev = event("fut-1", "acct-metro-pd", "face.identify", ts=NOW + FUTURE_TOLERANCE_MS + 1)
    out = route(router(), ev, partition=1, offset=77)
    assert counts(out) == {**counts(Routed()), "rejected": 1}
    assert out.forwards == {}
    (dl,) = out.dead_letters
    assert (dl.rejection.reason, dl.rejection.field) == (FUTURE_TIMESTAMP, "ts")
    assert (dl.topic, dl.partition, dl.offset) == (TOPIC, 1, 77)
    assert orjson.loads(dl.raw)["event_id"] == "fut-1"


def test_ts_exactly_five_minutes_ahead_is_accepted() -> None:
    assert FUTURE_TOLERANCE_MS == 5 * 60_000
    ev = event("fut-2", "acct-metro-pd", "face.verify", ts=NOW + 5 * 60_000)
    out = route(router(), ev)
    assert out.rejected == 0 and out.dead_letters == []
    assert [i["e"]["event_id"] for i in items(out)] == ["fut-2"]
    assert out.event_ts_ms == [NOW + 5 * 60_000] and out.now_ms == NOW


def test_future_timestamp_dead_letter_keeps_the_record_as_sent() -> None:
    """SPEC 2.3: rejected "the same way" as malformed input, so `raw` is the record as text.

    An investigator reading the DLQ must see what the producer sent (the RFC 3339 ts string
    and any extra fields), not frwatch's normalised re-serialisation of it.
    """
    ts = "2026-11-18T13:00:00.000Z"  # NOW is 12:06:40Z: 53 minutes ahead
    ev = event("fut-3", "acct-metro-pd", "face.identify", ts=ts, trace_id="abc")
    (dl,) = route(router(), ev).dead_letters
    assert dl.rejection.reason == FUTURE_TIMESTAMP
    assert orjson.loads(dl.raw) == ev


def test_future_timestamp_in_a_batch_rejects_only_that_record() -> None:
    batch = {
        "records": [
            event("b-1", "acct-metro-pd", "face.verify"),
            event("b-2", "acct-metro-pd", "face.verify", ts=NOW + 3_600_000),
            event("b-3", "acct-uni"),
        ]
    }
    out = route(router(), batch)
    assert (out.processed, out.rejected, out.malformed) == (1, 1, 0)
    assert [d.rejection.reason for d in out.dead_letters] == [FUTURE_TIMESTAMP]
    assert [i["e"]["event_id"] for i in items(out)] == ["b-1"]
    assert (out.hits, out.misses) == (2, 0)


# --- enrichment (SPEC 3) --------------------------------------------------------------------


def test_known_account_is_an_enrichment_hit_and_unknown_a_miss() -> None:
    r = router()
    hit = route(r, event("h-1", "acct-uni"))
    miss = route(r, event("m-1", "acct-nobody"))
    assert (hit.hits, hit.misses) == (1, 0)
    assert (miss.hits, miss.misses) == (0, 1)


def test_enrichment_uses_the_directory_at_the_time_of_routing() -> None:
    r = router()
    ev = event("x-1", "acct-late", "face.identify")
    first = route(r, ev)
    assert (first.hits, first.misses) == (0, 1)
    # unknown account doing fr_use: FR-008, with no account snapshot
    assert [(i["s"], i["a"]) for i in items(first)] == [("a", None)]
    r.directory.apply(AccountRecord("acct-late", org_id="org-late", sector="commercial"))
    second = route(r, dict(ev, event_id="x-2"))
    assert (second.hits, second.misses) == (1, 0)
    assert {i["a"]["org_id"] for i in items(second)} == {"org-late"}


def test_routed_records_carry_their_event_time_and_the_routing_wall_clock() -> None:
    out = route(router(), event(ts=NOW - 90_500))
    assert (out.event_ts_ms, out.now_ms) == ([NOW - 90_500], NOW)


# --- records that match no rule -------------------------------------------------------------


@pytest.mark.parametrize(
    "ev",
    [
        event("n-1", "acct-uni", "chat.completions"),
        event("n-2", "acct-uni", "embeddings"),
        event("n-3", "acct-bank-kyc", "face.verify", image_count=2),  # allowed verification
        event("n-4", "acct-uni", "face.detect", image_count=1, faces_detected=3),
        event("n-5", "acct-nobody", "some.unknown.operation"),
    ],
)
def test_record_matching_no_rule_is_processed_and_not_forwarded(ev: dict[str, Any]) -> None:
    out = route(router(), ev)
    assert out.forwards == {}
    assert out.processed == 1
    assert out.dead_letters == []
    assert out.hits + out.misses == 1


# --- records that match rules ---------------------------------------------------------------


def test_account_scope_match_goes_to_the_account_partition_counted() -> None:
    ev = event(
        "le-1",
        "acct-metro-pd",
        "face.verify",
        image_count=1,
        capture={"device": "body_camera", "setting": "in_the_wild"},
        trace_id="dropped",
    )
    out = route(router(), ev)
    assert out.processed == 0, "stage 2 counts forwarded records"
    # FR-001 and FR-002 match in the account scope (no org rule): one item, not two
    assert list(out.forwards) == [destination("acct-metro-pd", PARTITIONS)]
    (item,) = items(out)
    assert item["s"] == "a" and item["c"] == 1 and item["k"] == KAFKA_TS
    assert item["e"] == {
        "event_id": "le-1",
        "ts": DEFAULT_START_MS,
        "account_id": "acct-metro-pd",
        "operation": "face.verify",
        "image_count": 1,
        "capture": {"device": "body_camera", "setting": "in_the_wild"},
    }
    assert item["a"] == {
        "account_id": "acct-metro-pd",
        "org_id": "org-metro",
        "org_name": "Metro City Police",
        "sector": "law_enforcement",
        "acting_for": None,
        "country": "US",
        "approved_uses": [],
    }
    orjson.dumps({"items": [item]})  # the stage-2 message is plain JSON


def test_org_scope_copy_goes_to_the_org_partition_not_counted() -> None:
    ev = event("org-1", "acct-retail-east", "face.identify", subject_ids=["s-1"])
    out = route(router(), ev)
    by_scope = {i["s"]: (p, i) for p, its in out.forwards.items() for i in its}
    assert set(by_scope) == {"a", "o"}  # FR-007 (account) and FR-006 (org)
    part_a, item_a = by_scope["a"]
    part_o, item_o = by_scope["o"]
    assert part_a == destination("acct-retail-east", PARTITIONS)
    assert part_o == destination("org-retail", PARTITIONS)
    assert (item_a["c"], item_o["c"]) == (1, 0)
    assert item_a["e"] == item_o["e"] and item_a["a"] == item_o["a"]
    assert item_o["a"]["org_id"] == "org-retail"
    assert out.processed == 0 and sum(i["c"] for i in items(out)) == 1


def test_destination_is_stable_and_in_range() -> None:
    keys = [f"acct-{i}" for i in range(200)]
    parts = [destination(k, PARTITIONS) for k in keys]
    assert all(0 <= p < PARTITIONS for p in parts)
    assert parts == [destination(k, PARTITIONS) for k in keys]
    assert len(set(parts)) == PARTITIONS
    assert destination("org-retail", 1) == 0


def test_message_key_plays_no_part() -> None:
    """SPEC 1: routing uses the value's account_id (route() does not even take the key)."""
    ev = event("k-1", "acct-fleetcam", "face.verify", capture={"device": "dash_camera"})
    out = route(router(), ev)
    assert list(out.forwards) == [destination("acct-fleetcam", PARTITIONS)]


def _traffic() -> list[dict[str, Any]]:
    return list(demo_traffic(5, DEFAULT_START_MS, 20))


def test_batch_of_mixed_accounts_routes_like_records_sent_one_by_one() -> None:
    records = _traffic()
    assert len({r["account_id"] for r in records}) > 5
    batched = route(router(), {"records": records}, partition=0, offset=7)
    one_by_one: dict[int, list[dict[str, Any]]] = {}
    singles = Routed()
    r = router()
    for rec in records:
        out = route(r, rec, partition=0, offset=7)
        for part, its in out.forwards.items():
            one_by_one.setdefault(part, []).extend(its)
        for name in ("processed", "malformed", "rejected", "error", "hits", "misses"):
            setattr(singles, name, getattr(singles, name) + getattr(out, name))
        singles.event_ts_ms.extend(out.event_ts_ms)
    assert batched.forwards == one_by_one
    assert counts(batched) == counts(singles)
    # the lag histogram takes them in any order
    assert sorted(batched.event_ts_ms) == sorted(singles.event_ts_ms)
    assert batched.processed + sum(i["c"] for i in items(batched)) == len(records)


def test_every_record_is_accounted_for_exactly_once() -> None:
    records: list[Any] = [*_traffic(), 7, {"event_id": "no-ts"}]
    records.append(event("fut", ts=NOW + 10 * 60_000))
    out = route(router(), {"records": records})
    counted = out.processed + out.malformed + out.rejected + out.error
    assert counted + sum(i["c"] for i in items(out)) == len(records)
    assert out.hits + out.misses == len(records) - out.malformed - out.rejected


# --- internal errors (SPEC 2.3) -------------------------------------------------------------


def _exploding(rule_id: str) -> RuleSet:
    """The built-in rules with `rule_id`'s match raising for event ids starting with "boom"."""

    def swap(rule: Any) -> Any:
        if rule.id != rule_id:
            return rule
        original = rule.match

        def match(ee: EnrichedEvent) -> bool:
            if ee.event.event_id.startswith("boom"):
                raise RuntimeError("rule exploded")
            return bool(original(ee))

        return dataclasses.replace(rule, match=match)

    return dataclasses.replace(RULES, rules=tuple(swap(r) for r in RULES.rules))


@pytest.mark.parametrize(
    ("rule_id", "ev"),
    [
        # the account-scope rule raises before anything is forwarded
        ("FR-001", event("boom-1", "acct-metro-pd", "face.identify")),
        # the org-scope rule raises after the account-scope item has been built
        ("FR-006", event("boom-2", "acct-retail-east", "face.identify", subject_ids=["s-1"])),
    ],
    ids=["account-scope-rule", "org-scope-rule"],
)
def test_exception_in_routing_is_an_internal_error_and_the_next_record_goes_on(
    rule_id: str, ev: dict[str, Any]
) -> None:
    r = router(_exploding(rule_id))
    follow = dict(ev, event_id="fine-1")
    out = route(r, {"records": [ev, follow]}, partition=6, offset=99)
    assert out.error == 1
    (dl,) = out.dead_letters
    assert (dl.rejection.reason, dl.rejection.field) == (INTERNAL_ERROR, None)
    assert "RuntimeError" in dl.rejection.detail and "rule exploded" in dl.rejection.detail
    assert orjson.loads(dl.raw)["event_id"] == ev["event_id"]
    assert (dl.topic, dl.partition, dl.offset) == (TOPIC, 6, 99)
    # the failed record is counted once, as an error: it must not also reach stage 2, where it
    # would be counted a second time (SPEC 7: every record exactly once, under one result)
    forwarded = {i["e"]["event_id"] for i in items(out)}
    assert ev["event_id"] not in forwarded
    assert "fine-1" in forwarded
    counted = out.processed + out.malformed + out.rejected + out.error
    assert counted + sum(i["c"] for i in items(out)) == 2
    # and the router keeps working on the next message
    nxt = route(r, dict(ev, event_id="fine-2"))
    assert nxt.error == 0 and nxt.dead_letters == []
    assert "fine-2" in {i["e"]["event_id"] for i in items(nxt)}


# --- the gates skip only records that no rule can match -------------------------------------

_OPERATIONS = [
    "face.identify",
    "face.find_similar",
    "face.verify",
    "person_group.add_face",
    "face_list.add_face",
    "face.detect",
    "chat.completions",
    "responses",
    "vision.analyze",
    "audio.chat",
    "speaker.identify",
    "speaker.enroll",
    "TextDependent_VerifyProfile",
    "Face_Identify",
    "PersonGroupOperations_AddLargePersonGroupPersonFace",
    "embeddings",
]
_SAMPLE_ACCOUNT_IDS = sorted(directory()._accounts)


def _gate_cases() -> list[dict[str, Any]]:
    """Every combination of what the gates and the kind read, with and without context."""
    cases = []
    labels = [None, "identify_person", "verify_identity", "describe_scene", "none"]
    for account_id, operation, label, score, (images, audios), context in itertools.product(
        [*_SAMPLE_ACCOUNT_IDS, "acct-unknown"],
        [*_OPERATIONS, "other.op"],
        [*labels, "no-intent"],
        [None, 0.5, 0.8, 1],
        [(0, 0), (1, 0), (0, 1), (1, 1)],
        [False, True],
    ):
        rec = event(
            f"g-{len(cases)}", account_id, operation, image_count=images, audio_count=audios
        )
        if label != "no-intent":
            rec["intent"] = {"label": label, "score": score}
        if context:
            rec["capture"] = {"device": "body_camera", "setting": "in_the_wild"}
            rec["gallery"] = {"id": "pg-1", "kind": "suspects"}
            rec["subject_ids"] = ["s-1"]
        cases.append(rec)
    return cases


def test_router_forwards_exactly_what_an_ungated_evaluation_matches() -> None:
    """Gates (bio_kind, trait, operation, intent.label) and the verdict read off the raw record skip
    exactly the records for which no rule matches, evaluating every rule the slow way."""
    records = _gate_cases()
    out = route(router(), {"records": records})
    got = sorted(
        (part, i["s"], i["e"]["event_id"]) for part in out.forwards for i in out.forwards[part]
    )
    want = []
    accounts = directory()
    for rec in records:
        ev = parse_request_record(rec)
        assert isinstance(ev, RequestEvent)
        ee = EnrichedEvent(ev, accounts.get(rec["account_id"]), builtin_classification())
        for scope, tag in (("account_id", "a"), ("org_id", "o")):
            keys = {
                gk
                for rule in RULES.rules
                if rule.group_by == scope and rule.match(ee) and (gk := group_key(rule, ee))
            }
            want += [(destination(gk, PARTITIONS), tag, ev.event_id) for gk in keys]
    assert got == sorted(want)
    forwarded = {e for _, _, e in got}
    assert out.processed == len(records) - len(forwarded)
    # every rule's ways of matching are among the cases
    assert len(forwarded) > 1000


# --- the Screened wire format (screening processes) -----------------------------------------


def test_screened_survives_the_wire_unchanged() -> None:
    records: list[Any] = [
        *_traffic(),
        7,
        {"event_id": "no-ts"},
        event("fut", ts=NOW + 10 * 60_000),
        event(
            "uni",
            "acct-ünï",
            "face.identify",
            model="ünïcødé \u2028",
            intent={"label": "none", "score": 0.1 + 0.2},
        ),
    ]
    screened = router().screen.screen(orjson.dumps({"records": records}), NOW)
    assert screened.gated and screened.accounts and screened.letters and screened.batched
    back = Screened.from_wire(screened.to_wire())
    assert back == screened
    assert back.gated[-1][0]["intent"]["score"] == 0.1 + 0.2  # floats round-trip exactly
    assert "note" not in back.gated[-1][0]  # only SPEC 2.1's fields travel on


def test_screening_needs_no_directory_and_routing_counts_hits_when_routed() -> None:
    """A record's enrichment is looked up when it is routed, not when it was screened."""
    r = router()
    data = orjson.dumps({"records": [event("x-1", "acct-new"), event("x-2", "acct-uni")]})
    screened = Screened.from_wire(r.screen.screen(data, NOW).to_wire())
    assert screened.accounts == ["acct-new", "acct-uni"]
    r.directory.apply(AccountRecord("acct-new", org_id="org-new", sector="commercial"))
    out = r.route_screened(screened, data, TOPIC, 0, 1, KAFKA_TS, NOW)
    assert (out.hits, out.misses, out.processed) == (2, 0, 2)


# --- hostile input (SPEC 2.1, 2.3) ----------------------------------------------------------


def _deep(levels: int) -> Any:
    v: Any = 0
    for _ in range(levels):
        v = [v]
    return v


def test_a_record_nested_deeper_than_orjson_writes_leaves_its_neighbours_detected() -> None:
    good = [event(f"ok-{i}", "acct-metro-pd", "face.identify") for i in range(50)]
    bad = event("deep-1", "acct-metro-pd", "face.identify", extra={"x": _deep(300)})
    data = b'{"records":[' + b",".join([*map(orjson.dumps, good[:25])]) + b","
    data += json.dumps(bad).encode() + b"," + b",".join(map(orjson.dumps, good[25:])) + b"]}"
    out = route(router(), data)
    # the deep record is valid: its extra field is ignored, never re-serialised
    assert out.dead_letters == [] and out.error == 0
    assert {i["e"]["event_id"] for i in items(out)} == {*(g["event_id"] for g in good), "deep-1"}


def test_a_record_nested_deeper_than_orjson_reads_is_malformed_alone() -> None:
    good = [event(f"ok-{i}", "acct-metro-pd", "face.identify") for i in range(3)]
    deep = b'{"event_id":"deep","x":' + b"[" * 1100 + b"]" * 1100 + b"}"
    data = b'{"records":[' + orjson.dumps(good[0]) + b"," + deep + b","
    data += b",".join(map(orjson.dumps, good[1:])) + b'], "note": "x]},["}'
    out = route(router(), data, offset=5)
    assert out.malformed == 1
    (letter,) = out.dead_letters
    assert letter.rejection.reason == NOT_JSON and "too deep" in letter.rejection.detail
    assert letter.raw == deep.decode()
    assert {i["e"]["event_id"] for i in items(out)} == {"ok-0", "ok-1", "ok-2"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "m" * 1_000_000),
        ("account_id", "a" * 1025),
        ("operation", "o" * 1025),
        ("client_ip", "1" * 1025),
        ("subject_ids", ["s"] * 1001),
        ("subject_ids", ["s" * 1025]),
        ("gallery", {"id": "g" * 1025, "kind": "suspects"}),
        ("intent", {"label": "l" * 1025, "score": 0.9}),
    ],
)
def test_over_long_strings_and_arrays_are_out_of_range(field: str, value: Any) -> None:
    ev = {**event("long-1", "acct-metro-pd", "face.identify"), field: value}
    out = route(router(), ev)
    assert out.malformed == 1 and out.forwards == {} and out.forward_messages == []
    (letter,) = out.dead_letters
    assert letter.rejection.reason == OUT_OF_RANGE
    assert letter.rejection.field is not None and letter.rejection.field.startswith(field)
    assert len(letter.to_json()) < 100_000


def test_forwards_are_split_below_the_message_limit_in_order() -> None:
    limit = 8 * 1024
    r = Router(RULES, directory(), PARTITIONS, max_message_bytes=limit)
    evs = [event(f"id-{i:04d}", "acct-metro-pd", "face.identify") for i in range(2400)]
    out = route(r, {"records": evs})
    assert out.error == 0 and out.dead_letters == []
    assert len(out.forward_messages) > 1
    got: dict[int, list[dict[str, Any]]] = {}
    for part, value in out.forward_messages:
        assert len(value) <= limit - 512
        got.setdefault(part, []).extend(orjson.loads(value)["items"])
    assert got == out.forwards
    assert sum(len(v) for v in got.values()) == sum(len(v) for v in out.forwards.values())


def test_a_record_whose_forward_alone_is_too_big_is_dead_lettered() -> None:
    r = Router(RULES, directory(), PARTITIONS, max_message_bytes=4096)
    big = event("big-1", "acct-metro-pd", "face.identify", subject_ids=["s" * 1000] * 5)
    small = event("small-1", "acct-metro-pd", "face.identify")
    out = route(r, {"records": [big, small]})
    assert out.error == 1
    (letter,) = out.dead_letters
    assert letter.rejection.reason == INTERNAL_ERROR and "bytes" in letter.rejection.detail
    assert {i["e"]["event_id"] for i in items(out)} == {"small-1"}
    assert all(len(v) <= 4096 - 512 for _, v in out.forward_messages)
