"""The window table's changelog value (topics/window_state.py): a versioned contract."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from topics.window_state import VERSION, AlertProgress, WindowValue


def value() -> WindowValue:
    alert = AlertProgress(2, "update", 50, 5_000, {"account_id": "a"}, ["x" * 32], False)
    return WindowValue(600, [0], 600, [550], alert)


def test_round_trip_through_json() -> None:
    wire = orjson.loads(orjson.dumps(value().to_wire()))
    assert wire["v"] == VERSION == 2
    assert WindowValue.from_wire(wire) == value()
    assert WindowValue.from_wire(wire, n_requirements=2) is None  # another definition


@pytest.mark.parametrize(
    "wire",
    [
        None,
        [],
        {"f": True, "n": 1, "ic": 1, "c": [1], "d": [None], "s": []},  # v1: no "v"
        {**value().to_wire(), "v": 3},
        {**value().to_wire(), "n": -1},
        {**value().to_wire(), "n": True},
        {**value().to_wire(), "c": [0, 0]},
        {**value().to_wire(), "dc": ["x"]},
        {**value().to_wire(), "a": {"r": 0, "st": "resolved", "m0": 1, "nx": 10, "acct": {}}},
        {**value().to_wire(), "a": {"r": 0, "st": "open", "m0": 1, "nx": 10, "acct": None}},
        {**value().to_wire(), "est": "yes"},
    ],
)
def test_other_shapes_are_ignored_not_errors(wire: Any) -> None:
    assert WindowValue.from_wire(wire) is None
