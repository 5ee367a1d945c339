"""Window state per (rule, group, window), and where it is kept (memory here, Faust tables live)."""

from __future__ import annotations

import heapq
from collections import Counter
from typing import Any, Protocol

from streams.core.windows import is_expired


def window_key(rule_id: str, start_ms: int, end_ms: int, group_key: str) -> str:
    """Store key; the group key goes last because it may contain any character."""
    return f"{rule_id}|{start_ms}|{end_ms}|{group_key}"


def split_window_key(key: str) -> tuple[str, int, int, str]:
    """Inverse of `window_key`."""
    rule_id, start, end, group = key.split("|", 3)
    return rule_id, int(start), int(end), group


class WindowState:
    """What one (rule, group, window) holds: bounded by the thresholds plus 10 samples."""

    __slots__ = ("count", "distinct", "fired", "ids", "req_counts", "samples")

    def __init__(self, n_requirements: int) -> None:
        self.fired = False
        self.count = 0  # matching events counted
        self.ids: list[str] = []  # event ids kept to recognise redeliveries
        self.req_counts = [0] * n_requirements
        self.distinct: list[list[str] | None] = [None] * n_requirements
        self.samples: list[dict[str, Any]] = []

    def to_wire(self) -> dict[str, Any]:
        """A small JSON-able value (string keys only) for a changelogged table."""
        return {
            "f": self.fired,
            "n": self.count,
            "i": self.ids,
            "c": self.req_counts,
            "d": self.distinct,
            "s": self.samples,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> WindowState:
        """Inverse of `to_wire`."""
        st = cls(len(d["c"]))
        st.fired, st.count, st.ids, st.req_counts = d["f"], d["n"], d["i"], d["c"]
        st.distinct, st.samples = d["d"], d["s"]
        return st


class WindowStore(Protocol):
    """Where window states live."""

    def get(self, key: str) -> WindowState | None:
        """The state under `key`, or None."""

    def put(self, key: str, state: WindowState) -> None:
        """Store (or replace) a state."""

    def expire(self, watermark_ms: int) -> int:
        """Drop states whose window ended more than 24h of event time before the watermark."""

    def entries_by_rule(self) -> dict[str, int]:
        """Number of states held per rule id."""


class MemoryWindowStore:
    """In-process store for replay and tests; expiry in O(log n) with a heap of window ends."""

    def __init__(self) -> None:
        self._states: dict[str, WindowState] = {}
        self._ends: list[tuple[int, str]] = []

    def get(self, key: str) -> WindowState | None:
        """The state under `key`, or None."""
        return self._states.get(key)

    def put(self, key: str, state: WindowState) -> None:
        """Store a state; a new key is scheduled for expiry."""
        if key not in self._states:
            heapq.heappush(self._ends, (split_window_key(key)[2], key))
        self._states[key] = state

    def expire(self, watermark_ms: int) -> int:
        """Drop expired states; returns how many."""
        ends, dropped = self._ends, 0
        while ends and is_expired(ends[0][0], watermark_ms):
            _, key = heapq.heappop(ends)
            if self._states.pop(key, None) is not None:
                dropped += 1
        return dropped

    def entries_by_rule(self) -> dict[str, int]:
        """Number of states held per rule id."""
        return dict(Counter(k.split("|", 1)[0] for k in self._states))

    def __len__(self) -> int:
        return len(self._states)
