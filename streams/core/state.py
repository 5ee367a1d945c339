"""Window state per (rule, group, window), and where it is kept (memory here, Faust tables live)."""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter
from typing import Any, Protocol

from streams.core.windows import is_expired


def window_key(rule_id: str, version: str, start_ms: int, end_ms: int, group_key: str) -> str:
    """Store key: rule, the rule's state version (SPEC 4.3), window, group.

    The group key goes last because it may contain any character. A rule whose version
    changes looks up other keys, so its windows start afresh and never meet state counted
    under another definition.
    """
    return f"{rule_id}|{version}|{start_ms}|{end_ms}|{group_key}"


def split_window_key(key: str) -> tuple[str, str, int, int, str]:
    """Inverse of `window_key`; ValueError for a key of another shape."""
    rule_id, version, start, end, group = key.split("|", 4)
    return rule_id, version, int(start), int(end), group


_WIRE_KEYS = frozenset("fncds")
#: event ids of a window are kept as 64-bit hashes (blake2b): two ids of one window collide
#: with probability about n^2 / 2^65 (3e-10 for the 100,000 kept), accepted as negligible
#: hashes per changelog record of a window's ids; the last, partial one is rewritten by
#: every flush, so a small chunk keeps a window near 500 changelog bytes per event
#: (5,000 events into one FR-007 window: 32 -> 683, 16 -> 520, 8 -> 439 bytes per event)
ID_CHUNK = 16


def id_hash(event_id: str) -> int:
    """A fixed-size stand-in for an event id, to recognise redeliveries."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big")


class WindowState:
    """What one (rule, group, window) holds: bounded by the thresholds plus 10 samples."""

    __slots__ = ("count", "distinct", "fired", "id_order", "ids", "req_counts", "samples")

    def __init__(self, n_requirements: int) -> None:
        self.fired = False
        self.count = 0  # matching events counted
        self.ids: set[int] = set()  # hashes of the event ids counted (`id_hash`)
        #: the same hashes in the order counted, when the store persists them in chunks
        self.id_order: list[int] | None = None
        self.req_counts = [0] * n_requirements
        self.distinct: list[list[str] | None] = [None] * n_requirements
        self.samples: list[dict[str, Any]] = []

    def to_wire(self) -> dict[str, Any]:
        """A small JSON-able value (string keys only) for a changelogged table."""
        return {
            "f": self.fired,
            "n": self.count,
            "ic": len(self.ids),
            "c": self.req_counts,
            "d": self.distinct,
            "s": self.samples,
        }

    @classmethod
    def from_wire(cls, d: Any, n_requirements: int | None = None) -> WindowState | None:
        """Inverse of `to_wire`; None for a value of another shape (it is then ignored).

        With `n_requirements`, a value counted for a different number of requirements is
        also None: state never meets a rule definition it was not counted under.
        """
        if not isinstance(d, dict) or not d.keys() >= _WIRE_KEYS:
            return None
        if not isinstance(d["c"], list) or not isinstance(d["d"], list):
            return None
        if len(d["c"]) != len(d["d"]) or (
            n_requirements is not None and len(d["c"]) != n_requirements
        ):
            return None
        st = cls(len(d["c"]))
        st.fired, st.count, st.req_counts = d["f"], d["n"], d["c"]
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
            heapq.heappush(self._ends, (split_window_key(key)[3], key))
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
