"""The stage-2 contract (`topics.stage2`): forwards and watermark records on the detect topic."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from topics.accounts import AccountRecord
from topics.requests import Capture, Gallery, Intent, RequestEvent
from topics.stage2 import (
    FORWARD_VERSION,
    Stage2Error,
    Watermark,
    decode_forward,
    decode_forwards,
    envelope_bytes,
    forward_item,
    forward_messages,
    is_forwards,
    watermark_message,
)

SHA = "ab" * 32
EVENT = RequestEvent(
    "ev-1",
    1_763_449_200_123,
    "acct-1",
    "face.identify",
    api_key_id="key-1",
    image_count=2,
    subject_ids=("s1", "s2"),
    gallery=Gallery("g1", "suspects"),
    capture=Capture("body_camera", "in_the_wild"),
    intent=Intent("identify_person", 0.93),
    audio_count=1,
)
ACCOUNT = AccountRecord("acct-1", "org-1", "Org", "law_enforcement", None, "US", ("x",))


def item(event: RequestEvent = EVENT, **over: Any) -> dict[str, Any]:
    it = forward_item("a", event.to_wire(), ACCOUNT.to_wire(), 7, True, ["FR-001", "FR-004"])
    it.update(over)
    return it


def test_a_forward_round_trips_event_account_and_matched_rules() -> None:
    (value,) = forward_messages([orjson.dumps(item())], 10_000, SHA)
    assert is_forwards(value)
    msg = decode_forwards(value)
    assert (msg.version, msg.rules_sha256) == (FORWARD_VERSION, SHA)
    fwd = decode_forward(msg.items[0])
    assert fwd.event == EVENT
    assert fwd.account is not None and fwd.account.to_wire() == ACCOUNT.to_wire()
    assert (fwd.scope, fwd.kafka_ts_ms, fwd.counts, fwd.rule_ids) == (
        "a",
        7,
        True,
        ("FR-001", "FR-004"),
    )


@given(
    st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=60),
    st.integers(min_value=300, max_value=2_000),
)
def test_forward_messages_keep_order_and_stay_within_the_limit(
    sizes: list[bytes], limit: int
) -> None:
    items = [orjson.dumps({"n": i, "pad": b.hex()[: len(b)]}) for i, b in enumerate(sizes)]
    messages = forward_messages(items, limit, SHA)
    got: list[Any] = []
    for m in messages:
        msg = decode_forwards(m)
        # an item alone over the limit still goes (the router refuses those before)
        assert len(m) <= limit + envelope_bytes() or len(msg.items) == 1
        got.extend(msg.items)
    assert [x["n"] for x in got] == list(range(len(items)))


def test_a_message_without_a_version_is_version_0_and_not_trusted() -> None:
    it = item()
    del it["r"]
    msg = decode_forwards(orjson.dumps({"items": [it]}))
    assert (msg.version, msg.rules_sha256) == (0, None)
    assert decode_forward(msg.items[0]).rule_ids is None


@pytest.mark.parametrize(
    "value",
    [
        b'{"items":[],"v":2,"rules":"x"}',
        b'{"items":5}',
        b"not json",
    ],
    ids=["newer-version", "items-not-a-list", "not-json"],
)
def test_a_forwards_message_of_another_shape_is_refused_with_a_reason(value: bytes) -> None:
    with pytest.raises(Stage2Error) as err:
        decode_forwards(value)
    assert str(err.value)


@pytest.mark.parametrize(
    "over",
    [
        {"s": "x"},
        {"e": {"event_id": "e", "ts": "yesterday", "account_id": "a", "operation": "o"}},
        {"e": {"ts": 1, "account_id": "a", "operation": "o"}},
        {"k": "7"},
        {"c": 2},
        {"r": "FR-001"},
        {"a": {"org_id": 1}},
        {"e": {**EVENT.to_wire(), "gallery": "suspects"}},
    ],
    ids=["scope", "ts", "event-id", "kafka-ts", "counts", "rules", "account", "gallery"],
)
def test_an_item_of_another_shape_fails_alone_with_a_reason(over: dict[str, Any]) -> None:
    with pytest.raises(Stage2Error):
        decode_forward(item(**over))


def test_watermarks_round_trip_and_are_not_forwards() -> None:
    value = watermark_message(3, [(0, 10, False), (2, -1, True)])
    assert not is_forwards(value)
    assert Watermark.from_wire(value) == Watermark(3, ((0, 10, False), (2, -1, True)))


@pytest.mark.parametrize(
    "value",
    [
        b'{"v":2,"n":1,"wm":[]}',
        b'{"v":1,"n":"1","wm":[]}',
        b'{"v":1,"n":1,"wm":[[0,"5",false]]}',
        b'{"v":1,"n":1,"wm":[[0,5]]}',
    ],
    ids=["version", "inputs", "mark-type", "mark-shape"],
)
def test_a_watermark_of_another_shape_is_refused(value: bytes) -> None:
    with pytest.raises(Stage2Error):
        Watermark.from_wire(value)
