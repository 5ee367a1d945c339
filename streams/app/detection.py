"""Stage 2 (detect): routed records through the pure core, with window state in a table.

No Faust here either: the table is any mutable mapping (a Faust Table live, a dict in tests).
Writes are buffered so that the agent can record a fired window only after its alert has
been acknowledged by Kafka.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.app.routing import destination
from streams.core.classify import EnrichedEvent
from streams.core.engine import Detector
from streams.core.exceptions import ExceptionFilter
from streams.core.rules import RuleSet
from streams.core.state import ID_CHUNK, WindowState, split_window_key
from streams.core.windows import is_expired
from topics.alerts import Alert
from topics.dlq import INTERNAL_ERROR, DeadLetter, Rejection
from topics.stage2 import (
    Stage2Error,
    Watermark,
    decode_forward,
    decode_forwards,
    is_forwards,
)


def ids_key(key: str, chunk: int) -> str:
    """Table key of one chunk of a window's id hashes (the window key last: its group)."""
    return f"~i|{chunk}|{key}"


def samples_key(key: str) -> str:
    """Table key of a window's evidence samples (written only when they change)."""
    return f"~s|{key}"


class TableWindowStore:
    """WindowStore over a mapping, with a write buffer flushed after acks.

    A window is one small value (counts, distinct values up to the thresholds), its
    evidence samples under `samples_key`, and its event-id hashes in chunks of `ID_CHUNK`
    under `ids_key`: a flush rewrites the small value, the samples only when they changed
    (the first 10 events of a window), and only the chunks that gained ids, so what a window
    writes to the changelog grows linearly with the events it counts (SPEC 4.1), where one
    value holding every id grew quadratically.
    States read once are kept in memory until their partition is revoked or they expire.
    """

    def __init__(self, table: MutableMapping[str, Any]) -> None:
        self.table = table
        self.pending: dict[str, WindowState] = {}
        self.created: list[str] = []  # keys new since the last `take_created`
        self._cache: dict[str, WindowState] = {}
        self._persisted: dict[str, int] = {}  # key -> ids already in the table's chunks
        self._samples: dict[str, list[str]] = {}  # key -> event ids of the samples written

    def get(self, key: str) -> WindowState | None:
        """Buffered or cached state first, then the table."""
        st = self.pending.get(key) or self._cache.get(key)
        if st is not None:
            return st
        wire = self.table.get(key)
        if wire is None:
            return None
        st = WindowState.from_wire(wire)
        if st is None:
            return None
        n = wire.get("ic", 0)
        order: list[int] = []
        for chunk in range((n + ID_CHUNK - 1) // ID_CHUNK):
            order.extend(self.table.get(ids_key(key, chunk)) or ())
        st.id_order = order
        st.ids = set(order)
        samples = self.table.get(samples_key(key))
        if isinstance(samples, list):  # (a value written before samples had their own key
            st.samples = samples  # holds them inline)
        self._persisted[key] = len(order)
        self._samples[key] = _sample_ids(st.samples)
        self._cache[key] = st
        return st

    def put(self, key: str, state: WindowState) -> None:
        """Buffer a write until `flush`."""
        if state.id_order is None:  # a new state: its ids so far, in no particular order
            state.id_order = list(state.ids)
        if key not in self.pending and key not in self._cache and key not in self.table:
            self.created.append(key)
        self.pending[key] = state

    def flush(self) -> None:
        """Write buffered states to the table (its changelog): the value and new id chunks."""
        for key, st in self.pending.items():
            wire = st.to_wire()
            wire["s"] = []  # under samples_key
            self.table[key] = wire
            written = _sample_ids(st.samples)
            if written != self._samples.get(key):
                self.table[samples_key(key)] = st.samples
                self._samples[key] = written
            order = st.id_order or []
            done = self._persisted.get(key, 0)
            for chunk in range(done // ID_CHUNK, (len(order) + ID_CHUNK - 1) // ID_CHUNK):
                self.table[ids_key(key, chunk)] = order[chunk * ID_CHUNK : (chunk + 1) * ID_CHUNK]
            self._persisted[key] = len(order)
            self._cache[key] = st
        self.pending.clear()

    def drop(self, key: str) -> None:
        """Delete a state and its id chunks from the table (tombstones in the changelog)."""
        wire = self.table.get(key)
        n = wire.get("ic", 0) if isinstance(wire, dict) else 0
        for chunk in range((n + ID_CHUNK - 1) // ID_CHUNK):
            if ids_key(key, chunk) in self.table:
                del self.table[ids_key(key, chunk)]
        if samples_key(key) in self.table:
            del self.table[samples_key(key)]
        if key in self.table:
            del self.table[key]
        self._cache.pop(key, None)
        self._persisted.pop(key, None)
        self._samples.pop(key, None)

    def forget(self) -> None:
        """After a rebalance: the table is the truth again."""
        self._cache.clear()
        self._persisted.clear()
        self._samples.clear()

    def expire(self, watermark_ms: int) -> int:
        """Not used live: expiry runs per partition (see DetectStage.expired_keys)."""
        return 0

    def entries_by_rule(self) -> dict[str, int]:
        """Number of states held per rule id."""
        return dict(Counter(k.split("|", 1)[0] for k in list(self.table.keys()) if k[:1] != "~"))


def _sample_ids(samples: list[dict[str, Any]]) -> list[str]:
    return [str(x.get("event_id")) for x in samples]


@dataclass(slots=True)
class Detected:
    """What one stage-2 message produced."""

    alerts: list[tuple[Alert, int]] = field(default_factory=list)  # (alert, kafka ts ms)
    matches: Counter[str] = field(default_factory=Counter)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    processed: int = 0
    duplicate: int = 0
    error: int = 0


#: table key prefix of a detect partition's retention clock ("~" starts no rule id)
CLOCK_KEY = "~clock|"


def clock_key(partition: int) -> str:
    """Table key under which a detect partition keeps its retention clock."""
    return f"{CLOCK_KEY}{partition}"


def low_watermark(inputs: int, marks: dict[int, tuple[int, bool]]) -> int | None:
    """The lowest event time over the input partitions that are not idle.

    None while some partition has not reported yet: nothing may be dropped that it may
    still need. When every partition is idle, everything was read: the highest mark.
    """
    if inputs <= 0 or any(p not in marks for p in range(inputs)):
        return None
    busy = [wm for p, (wm, idle) in marks.items() if p < inputs and not idle]
    if busy:
        return min(busy)
    return max(wm for p, (wm, _) in marks.items() if p < inputs)


class DetectStage:
    """Runs the account-scoped and org-scoped rules on routed items.

    Each detect partition has its own retention clock: the low watermark of the input
    partitions (SPEC 4.1), learnt from the watermark records that every ingest sends to every
    detect partition after the forwards they cover. It never moves back and is kept in the
    table (`clock_key`), so it survives restarts and rebalances.
    """

    def __init__(
        self,
        rules: RuleSet,
        table: MutableMapping[str, Any],
        partitions: int,
        exceptions: ExceptionFilter | None = None,
    ) -> None:
        self.store = TableWindowStore(table)
        self.exceptions = exceptions  # SPEC 4.4, applied by both detectors
        self.partitions = partitions
        self.clocks: dict[int, int] = {}  # detect partition -> retention clock (event ms)
        self.marks: dict[int, dict[int, tuple[int, bool]]] = {}  # detect p -> input p -> mark
        self._ends: dict[int, list[tuple[int, str]]] = {}  # partition -> heap of (end, key)
        self._swept: dict[int, int] = {}  # partition -> its clock at the last expiry pass
        # partitions whose states of rule versions no longer in force are still to be dropped
        self._purged: set[int] = set()
        self.set_rules(rules)

    def set_rules(self, rules: RuleSet) -> None:
        """Detect by these rules from the next message on (SPEC 4.3).

        A rule whose version is unchanged finds its windows under the same keys and goes on;
        a changed one looks up other keys, so it starts afresh; the states of versions no
        longer in force (changed, removed or disabled rules) are dropped by `expired_keys`,
        partition by partition, as the detect agent passes there.
        """
        self.detectors = {
            "a": Detector(rules, self.store, "account_id", self.exceptions),
            "o": Detector(rules, self.store, "org_id", self.exceptions),
        }
        self.versions = frozenset((r.id, r.state_version) for r in rules.rules)
        self.classification = rules.classification
        self.rules_sha256 = rules.sha256
        self._purged.clear()

    @staticmethod
    def is_watermark(value: bytes) -> bool:
        """Whether a stage-2 message is a watermark record (not forwards)."""
        return not is_forwards(value)

    def clock(self, partition: int) -> int:
        """The retention clock of a detect partition (0 before anything is known)."""
        clock = self.clocks.get(partition)
        if clock is None:
            stored = self.store.table.get(clock_key(partition))
            clock = stored["clock"] if isinstance(stored, dict) and "clock" in stored else 0
            self.clocks[partition] = clock
            # the clock as kept: what was due at it was swept before (a restart drops nothing
            # that the worker would have kept had it not stopped; see expired_keys)
            self._swept[partition] = clock
        return clock

    def report(self, partition: int, value: bytes) -> bool:
        """Apply a watermark record; True when the partition's clock moved (and was stored)."""
        mark = Watermark.from_wire(value)
        marks = self.marks.setdefault(partition, {})
        for p, wm, idle in mark.marks:
            marks[p] = (wm, idle)
        low = low_watermark(mark.inputs, marks)
        if low is None or low <= self.clock(partition):
            return False
        self.clocks[partition] = low
        self.store.table[clock_key(partition)] = {"clock": low}
        return True

    def observe(self, value: bytes, topic: str, partition: int, offset: int) -> Detected:
        """Every item of one forwards message (`topics.stage2`).

        The events were validated, enriched and matched at ingest: an item is only checked
        for shape, and its rules are the ones that matched there when the message was routed
        under the rules in force here (else, around a rules change, they are matched again).
        """
        out = Detected()
        try:
            msg = decode_forwards(value)
        except Stage2Error as exc:
            self._dead_letter(
                out, exc, value.decode("utf-8", "replace"), 1, topic, partition, offset
            )
            return out
        trusted = msg.version >= 1 and msg.rules_sha256 == self.rules_sha256
        for item in msg.items:
            try:
                fwd = decode_forward(item)
                obs = self.detectors[fwd.scope].observe(
                    EnrichedEvent(fwd.event, fwd.account, self.classification),
                    fwd.rule_ids if trusted else None,
                )
            except Exception as exc:  # a deterministic bug: dead-letter, count, go on
                counts = item.get("c", 1) if isinstance(item, dict) else 1
                text = orjson.dumps(item.get("e") if isinstance(item, dict) else item).decode()
                self._dead_letter(out, exc, text, counts, topic, partition, offset)
                continue
            out.matches.update(obs.matched)
            if fwd.counts:
                if obs.duplicate:
                    out.duplicate += 1
                else:
                    out.processed += 1
            out.alerts.extend((a, fwd.kafka_ts_ms) for a in obs.alerts)
        return out

    @staticmethod
    def _dead_letter(
        out: Detected,
        exc: Exception,
        text: str,
        counts: int,
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        out.error += counts
        out.dead_letters.append(
            DeadLetter(
                Rejection(INTERNAL_ERROR, None, f"{type(exc).__name__}: {exc}"),
                text,
                topic,
                partition,
                offset,
            )
        )

    def forget_partitions(self) -> None:
        """After a rebalance: rebuild the expiry index and clocks from the table when needed."""
        self._ends.clear()
        self.store.forget()
        self.clocks.clear()
        self.marks.clear()
        self._swept.clear()
        self._purged.clear()  # the table may hold states of versions no longer in force

    def _index(self, partition: int) -> list[tuple[int, str]]:
        heap = self._ends.get(partition)
        if heap is None:  # first use since start or rebalance: index what the table holds
            heap = []
            for key in list(self.store.table.keys()):
                if not isinstance(key, str) or key[:1] == "~":
                    continue
                try:
                    _, _, _, end, gk = split_window_key(key)
                except ValueError:  # a key of an earlier format: never looked up again
                    continue
                if destination(gk, self.partitions) == partition:
                    heap.append((end, key))
            heapq.heapify(heap)
            self._ends[partition] = heap
        return heap

    def _retired(self, key: str) -> bool:
        """A state counted under a rule version that is not in force (SPEC 4.3)."""
        rule_id, version, _ = key.split("|", 2)
        return (rule_id, version) not in self.versions

    def expired_keys(self, partition: int) -> list[str]:
        """Keys of `partition` whose windows the retention clock has left more than 24h behind,
        and, once after each rules change (and after a start or rebalance), the keys of rule
        versions no longer in force.

        Called for every stage-2 message, but a pass runs only when the partition's clock has
        moved since the last one, as in replay (`Detector.expire`): a window that a late event
        started beyond retention lives until the clock next moves, so the late events after it
        count with it. A heap of window ends per partition makes a pass with nothing due one
        comparison.
        """
        for key in self.store.created:
            _, _, _, end, gk = split_window_key(key)
            # a partition without an index yet finds the key in the table when it builds one
            known = self._ends.get(destination(gk, self.partitions))
            if known is not None:
                heapq.heappush(known, (end, key))
        self.store.created.clear()
        heap = self._index(partition)
        out: list[str] = []
        if partition not in self._purged:
            self._purged.add(partition)
            out.extend(key for _, key in heap if self._retired(key) and key in self.store.table)
        wm = self.clock(partition)
        if wm <= self._swept.get(partition, -1):
            return out
        self._swept[partition] = wm
        while heap and is_expired(heap[0][0], wm):
            _, key = heapq.heappop(heap)
            if key in self.store.table and key not in out:
                out.append(key)
        return out
