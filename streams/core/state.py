"""Window state per (rule, group, window), where it is kept, and its lifecycle.

`WindowLifecycle` is the one owner of what happens to states over time, in replay and live
alike: per partition (replay has one; live, one per detect partition) it keeps the retention
clock (SPEC 4.1), closes fired windows once the clock passes their end by the rule's
`close_after` (SPEC 5), drops states that the clock has left more than 24h behind, and drops
states of rule versions no longer in force (SPEC 4.3). Stores only keep states.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import datasketches

from streams.core.windows import RETENTION_MS, is_expired
from topics.window_state import AlertProgress, WindowValue


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


#: event ids (and distinct values) of a window are kept as 64-bit hashes (blake2b): two of one
#: window collide with probability about n^2 / 2^65 (3e-10 for the 100,000 kept), accepted
#: as negligible. Hashes per changelog record of a window's ids; the last, partial one is
#: rewritten by every flush, so a small chunk keeps a window near 500 changelog bytes per
#: event (5,000 events into one FR-007 window: 32 -> 683, 16 -> 520, 8 -> 439 bytes per event)
ID_CHUNK = 16
#: counted exactly up to here (event ids, and distinct values per requirement); beyond,
#: HLL sketches estimate (SPEC 5)
MAX_EXACT = 100_000
#: HLL with 2^14 registers: relative standard error about 0.8% (HIP estimator: ~0.65%),
#: 8 KB serialized (HLL_4)
SKETCH_LG_K = 14


def id_hash(event_id: str) -> int:
    """A fixed-size stand-in for an event id (or a distinct value)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big")


def new_sketch(hashes: Iterable[int] = ()) -> datasketches.hll_sketch:
    """An HLL sketch holding these hashes."""
    sk = datasketches.hll_sketch(SKETCH_LG_K, datasketches.tgt_hll_type.HLL_4)
    for h in hashes:
        sk.update(h)
    return sk


def sketch_to_text(sk: datasketches.hll_sketch) -> str:
    """A sketch as text for a JSON value."""
    return base64.b64encode(sk.serialize_compact()).decode()


def sketch_from_text(text: str) -> datasketches.hll_sketch:
    """Inverse of `sketch_to_text`."""
    return datasketches.hll_sketch.deserialize(base64.b64decode(text))


class WindowState:
    """What one (rule, group, window) holds: counts, id and value hashes, up to 10 samples,
    and, once fired, where its alert stands."""

    __slots__ = (
        "alert",
        "count",
        "distinct",
        "distinct_order",
        "estimated",
        "id_order",
        "id_sketch",
        "ids",
        "req_counts",
        "samples",
        "value_sketches",
    )

    def __init__(self, n_requirements: int) -> None:
        self.count = 0  # matching events counted
        self.ids: set[int] = set()  # hashes of the event ids counted (`id_hash`)
        #: the same hashes in the order counted, when the store persists them in chunks
        self.id_order: list[int] | None = None
        self.req_counts = [0] * n_requirements
        #: per distinct requirement: hashes of the values counted (None: a count requirement)
        self.distinct: list[set[int] | None] = [None] * n_requirements
        self.distinct_order: list[list[int]] | None = None  # as id_order, per requirement
        self.samples: list[dict[str, Any]] = []
        self.alert: AlertProgress | None = None  # None until the window fires
        #: past exact counting: count and distinct are HLL estimates
        self.estimated = False
        self.id_sketch: datasketches.hll_sketch | None = None
        self.value_sketches: list[datasketches.hll_sketch | None] = [None] * n_requirements

    @property
    def fired(self) -> bool:
        """Whether the window has fired."""
        return self.alert is not None

    def distinct_count(self, i: int) -> int:
        """Distinct values counted for requirement i (estimated beyond `MAX_EXACT`)."""
        sk = self.value_sketches[i]
        if sk is not None:
            estimate: float = sk.get_estimate()
            return max(round(estimate), len(self.distinct[i] or ()))
        return len(self.distinct[i] or ())

    def value(self) -> WindowValue:
        """The small part, for the changelog (topics/window_state.py)."""
        sketches = {}
        if self.estimated:
            if self.id_sketch is not None:
                sketches["i"] = sketch_to_text(self.id_sketch)
            for i, sk in enumerate(self.value_sketches):
                if sk is not None:
                    sketches[str(i)] = sketch_to_text(sk)
        return WindowValue(
            self.count,
            self.req_counts,
            len(self.ids),
            [None if d is None else len(d) for d in self.distinct],
            self.alert,
            self.estimated,
            sketches,
        )

    @classmethod
    def from_value(cls, v: WindowValue) -> WindowState:
        """A state from its small part; the caller adds the hashes and samples."""
        st = cls(len(v.req_counts))
        st.count, st.req_counts, st.alert = v.count, v.req_counts, v.alert
        st.distinct = [None if n is None else set() for n in v.distinct]
        st.estimated = v.estimated
        if v.estimated:
            if "i" in v.sketches:
                st.id_sketch = sketch_from_text(v.sketches["i"])
            for i in range(len(st.value_sketches)):
                if str(i) in v.sketches:
                    st.value_sketches[i] = sketch_from_text(v.sketches[str(i)])
        return st


class WindowStore(Protocol):
    """Where window states (and each partition's retention clock) are kept."""

    def get(self, key: str) -> WindowState | None:
        """The state under `key`, or None."""

    def put(self, key: str, state: WindowState) -> None:
        """Store (or replace) a state."""

    def drop(self, key: str) -> None:
        """Delete a state."""

    def window_keys(self) -> Iterable[str]:
        """The window keys held (rule|version|start|end|group)."""

    def load_clock(self, partition: int) -> int:
        """A partition's retention clock as kept (0 when none)."""

    def save_clock(self, partition: int, clock_ms: int) -> None:
        """Keep a partition's retention clock."""

    def entries_by_rule(self) -> dict[str, int]:
        """Number of states held per rule id."""


class MemoryWindowStore:
    """In-process store for replay and tests."""

    def __init__(self) -> None:
        self._states: dict[str, WindowState] = {}
        self._clocks: dict[int, int] = {}

    def get(self, key: str) -> WindowState | None:
        """The state under `key`, or None."""
        return self._states.get(key)

    def put(self, key: str, state: WindowState) -> None:
        """Store a state."""
        self._states[key] = state

    def drop(self, key: str) -> None:
        """Delete a state."""
        self._states.pop(key, None)

    def window_keys(self) -> Iterable[str]:
        """The window keys held."""
        return list(self._states)

    def load_clock(self, partition: int) -> int:
        """A partition's retention clock as kept."""
        return self._clocks.get(partition, 0)

    def save_clock(self, partition: int, clock_ms: int) -> None:
        """Keep a partition's retention clock."""
        self._clocks[partition] = clock_ms

    def entries_by_rule(self) -> dict[str, int]:
        """Number of states held per rule id."""
        return dict(Counter(k.split("|", 1)[0] for k in self._states))

    def __len__(self) -> int:
        return len(self._states)


@dataclass(slots=True)
class Due:
    """What one sweep of a partition found: windows to close, states to drop."""

    closing: list[str] = field(default_factory=list)  # fired windows past end + close_after
    expired: list[str] = field(default_factory=list)  # more than 24h behind the clock
    retired: list[str] = field(default_factory=list)  # of rule versions no longer in force


#: what a sweep with nothing due returns; never mutated
NOTHING_DUE = Due()
NEVER = 2**63  # a due time no clock reaches


@dataclass(slots=True)
class _Partition:
    clock: int
    ends: list[tuple[int, str]]  # heap of (window end, key): expiry
    closes: list[tuple[int, str]]  # heap of (window end + close_after, key): closing
    swept: int  # the clock at the last expiry pass
    closed_at: int = -1  # the clock at the last closing pass
    purged: bool = False  # retired versions dropped since the last rules change
    #: no clock below this can make anything due (the heads of both heaps)
    next_due: int = 0

    def reckon(self) -> None:
        """Recompute `next_due` from the heaps."""
        close = self.closes[0][0] if self.closes else NEVER
        expire = self.ends[0][0] + RETENTION_MS + 1 if self.ends else NEVER
        self.next_due = min(close, expire)


class WindowLifecycle:
    """Per partition: the retention clock, closing, expiry and rule-version retirement.

    `partition_of(group_key)`: which partition a window belongs to (replay: all in 0).
    Keys created are indexed in heaps of due times, so a sweep with nothing due is one
    comparison per heap; a partition is indexed from the store at its first use (after a
    start or a rebalance: `forget`).
    """

    def __init__(self, store: WindowStore, partition_of: Callable[[str], int] | None = None):
        self.store = store
        self._partition_of = partition_of or (lambda _gk: 0)
        self._parts: dict[int, _Partition] = {}
        self.versions: frozenset[tuple[str, str]] | None = None  # None: any version is in force
        self._close_after: dict[tuple[str, str], int] = {}

    def set_rules(self, rules: Iterable[Any]) -> None:
        """The rules in force (SPEC 4.3): their versions, and each one's `close_after`."""
        rules = list(rules)
        self.versions = frozenset((r.id, r.state_version) for r in rules)
        self._close_after = {(r.id, r.state_version): r.close_after_ms for r in rules}
        for part in self._parts.values():
            part.purged = False

    def clocks(self) -> dict[int, int]:
        """The retention clock of every partition known."""
        return {p: part.clock for p, part in self._parts.items()}

    def clock(self, partition: int) -> int:
        """A partition's retention clock (as kept in the store after a start)."""
        return self._part(partition).clock

    def advance(self, partition: int, clock_ms: int) -> bool:
        """Move a partition's clock forward (never back) and keep it; True when it moved."""
        part = self._parts.get(partition) or self._part(partition)
        if clock_ms <= part.clock:
            return False
        part.clock = clock_ms
        self.store.save_clock(partition, clock_ms)
        return True

    def tick(self, partition: int, clock_ms: int) -> Due:
        """`advance` then `sweep` (replay's per-event pass): while the clock is below the
        earliest time anything can be due, one comparison."""
        part = self._parts.get(partition) or self._part(partition)
        if clock_ms > part.clock:
            part.clock = clock_ms
            self.store.save_clock(partition, clock_ms)
        if part.clock < part.next_due and part.purged:
            return NOTHING_DUE
        return self.sweep(partition)

    def created(self, key: str) -> None:
        """A new state under `key`: schedule its closing and expiry."""
        rule_id, version, _, end, gk = split_window_key(key)
        part = self._parts.get(self._partition_of(gk))
        if part is not None:  # else found in the store when its partition is indexed
            self._schedule(part, key, rule_id, version, end)

    def fired(self, key: str) -> None:
        """A window fired: when its closing time has already passed, close it at the next pass."""
        rule_id, version, _, end, gk = split_window_key(key)
        part = self._parts.get(self._partition_of(gk))
        after = self._close_after.get((rule_id, version))
        if part is not None and after is not None and end + after <= part.closed_at:
            heapq.heappush(part.closes, (end + after, key))  # closed when the clock next moves
            part.next_due = min(part.next_due, end + after)

    def sweep(self, partition: int) -> Due:
        """What is due in a partition at its clock.

        Retired versions once after each rules change (or start). Closing whenever the clock
        passes a fired window's end by close_after. Expiry only when the clock has moved
        since the last expiry pass, as in replay: a window that a late event started beyond
        retention lives until the clock next moves, so the late events after it count with it.
        """
        part = self._parts.get(partition) or self._part(partition)
        clock = part.clock
        if part.purged:  # the usual case: nothing due is a comparison per heap
            closes, ends = part.closes, part.ends
            if (not closes or closes[0][0] > clock) and (
                not ends or clock - ends[0][0] <= RETENTION_MS
            ):
                if clock > part.closed_at:
                    part.closed_at = clock
                if clock > part.swept:
                    part.swept = clock
                return NOTHING_DUE
        due = Due()
        if not part.purged:
            part.purged = True
            if self.versions is not None:
                versions = self.versions

                def retired(key: str) -> bool:
                    rule_id, version, _ = key.split("|", 2)
                    return (rule_id, version) not in versions

                due.retired = [k for _, k in part.ends if retired(k)]
                if due.retired:
                    part.ends = [e for e in part.ends if not retired(e[1])]
                    part.closes = [e for e in part.closes if not retired(e[1])]
                    heapq.heapify(part.ends)
                    heapq.heapify(part.closes)
        if clock > part.closed_at:
            part.closed_at = clock
            closes = part.closes
            while closes and closes[0][0] <= clock:
                due.closing.append(heapq.heappop(closes)[1])
        if clock > part.swept:
            part.swept = clock
            ends = part.ends
            while ends and is_expired(ends[0][0], clock):
                due.expired.append(heapq.heappop(ends)[1])
        part.reckon()
        return due

    def forget(self) -> None:
        """After a rebalance: clocks and indexes are read from the store again."""
        self._parts.clear()

    def _part(self, partition: int) -> _Partition:
        part = self._parts.get(partition)
        if part is None:
            clock = self.store.load_clock(partition)
            # what expired at the clock as kept was dropped before the stop (a restart drops
            # nothing that the worker would have kept); closing runs again at it (a closed
            # revision sent but not yet recorded is sent again)
            part = self._parts[partition] = _Partition(clock, [], [], clock, next_due=NEVER)
            for key in self.store.window_keys():
                try:
                    rule_id, version, _, end, gk = split_window_key(key)
                except ValueError:  # a key of an earlier format: never looked up again
                    continue
                if self._partition_of(gk) == partition:
                    self._schedule(part, key, rule_id, version, end)
        return part

    def _schedule(self, part: _Partition, key: str, rule_id: str, version: str, end: int) -> None:
        heapq.heappush(part.ends, (end, key))
        due = end + RETENTION_MS + 1
        after = self._close_after.get((rule_id, version))
        if after is not None:
            heapq.heappush(part.closes, (end + after, key))
            due = min(due, end + after)
        if due < part.next_due:
            part.next_due = due
