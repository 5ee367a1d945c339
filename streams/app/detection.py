"""Stage 2 (detect): routed records through the pure core, with window state in a table.

No Faust here either: the table is any mutable mapping (a Faust Table live, a dict in tests).
Writes are buffered so that the agent can record a fired window only after its alert has
been acknowledged by Kafka.
"""

from __future__ import annotations

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
from streams.core.state import ID_CHUNK, WindowLifecycle, WindowState
from topics.alerts import Alert
from topics.dlq import INTERNAL_ERROR, DeadLetter, Rejection
from topics.stage2 import (
    Stage2Error,
    Watermark,
    decode_forward,
    decode_forwards,
    is_forwards,
)
from topics.window_state import WindowValue


def ids_key(key: str, chunk: int) -> str:
    """Table key of one chunk of a window's id hashes (the window key last: its group)."""
    return f"~i|{chunk}|{key}"


def values_key(key: str, requirement: int, chunk: int) -> str:
    """Table key of one chunk of a window's distinct-value hashes for one requirement."""
    return f"~d|{requirement}|{chunk}|{key}"


def samples_key(key: str) -> str:
    """Table key of a window's evidence samples (written only when they change)."""
    return f"~s|{key}"


#: table key prefix of a detect partition's retention clock ("~" starts no rule id)
CLOCK_KEY = "~clock|"


def clock_key(partition: int) -> str:
    """Table key under which a detect partition keeps its retention clock."""
    return f"{CLOCK_KEY}{partition}"


def _chunks(n: int) -> range:
    return range((n + ID_CHUNK - 1) // ID_CHUNK)


class TableWindowStore:
    """WindowStore over a mapping, with a write buffer flushed after acks.

    A window is one small value (topics/window_state.py), its evidence samples under
    `samples_key`, its event-id hashes in chunks of `ID_CHUNK` under `ids_key` and its
    distinct-value hashes likewise under `values_key`: a flush rewrites the small value, the
    samples only when they changed (the first 10 events of a window), and only the chunks
    that gained hashes, so what a window writes to the changelog grows linearly with the
    events it counts (SPEC 4.1), where one value holding every id grew quadratically.
    States read once are kept in memory until their partition is revoked or they expire.
    """

    def __init__(self, table: MutableMapping[str, Any]) -> None:
        self.table = table
        self.pending: dict[str, WindowState] = {}
        self._cache: dict[str, WindowState] = {}
        #: key -> hashes already in the table's chunks: ids, then each requirement's values
        self._persisted: dict[str, list[int]] = {}
        self._samples: dict[str, list[str]] = {}  # key -> event ids of the samples written

    def get(self, key: str) -> WindowState | None:
        """Buffered or cached state first, then the table."""
        st = self.pending.get(key) or self._cache.get(key)
        if st is not None:
            return st
        value = WindowValue.from_wire(self.table.get(key))
        if value is None:  # absent, or of another shape or version: ignored (SPEC 4.3)
            return None
        st = WindowState.from_value(value)
        # chunks may hold more than the value counts (a flush cut short: see `flush`)
        order: list[int] = []
        for chunk in _chunks(value.ids):
            order.extend(self.table.get(ids_key(key, chunk)) or ())
        del order[value.ids :]
        st.id_order = order
        st.ids = set(order)
        st.distinct_order = []
        persisted = [len(order)]
        for i, n in enumerate(value.distinct):
            values: list[int] = []
            for chunk in _chunks(n or 0):
                values.extend(self.table.get(values_key(key, i, chunk)) or ())
            del values[n or 0 :]
            st.distinct_order.append(values)
            if n is not None:
                st.distinct[i] = set(values)
            persisted.append(len(values))
        samples = self.table.get(samples_key(key))
        if isinstance(samples, list):
            st.samples = samples
        self._persisted[key] = persisted
        self._samples[key] = _sample_ids(st.samples)
        self._cache[key] = st
        return st

    def put(self, key: str, state: WindowState) -> None:
        """Buffer a write until `flush`."""
        if state.id_order is None:  # a new state: its hashes so far, in no particular order
            state.id_order = list(state.ids)
            state.distinct_order = [list(d or ()) for d in state.distinct]
        self.pending[key] = state

    def flush(self) -> None:
        """Write buffered states to the table (its changelog): new chunks, then the value.

        The value goes last and says how many hashes its chunks hold: a worker killed in the
        middle of a flush leaves chunks ahead of their value, which reads them only up to its
        counts (`get`), so a window reads back as it was before that flush and the events of
        the flush, processed again, count again. (Value first, a kill could leave a value
        that counted hashes its chunks never received: a subject lost for good.)
        """
        for key, st in self.pending.items():
            written = _sample_ids(st.samples)
            if written != self._samples.get(key):
                self.table[samples_key(key)] = st.samples
                self._samples[key] = written
            persisted = self._persisted.get(key) or [0] * (1 + len(st.distinct))
            order = st.id_order or []
            self._write_chunks(order, persisted[0], lambda c, k=key: ids_key(k, c))  # type: ignore[misc]
            for i, values in enumerate(st.distinct_order or ()):
                self._write_chunks(
                    values,
                    persisted[i + 1],
                    lambda c, k=key, r=i: values_key(k, r, c),  # type: ignore[misc]
                )
            self.table[key] = st.value().to_wire()
            persisted[0] = len(order)
            for i, values in enumerate(st.distinct_order or ()):
                persisted[i + 1] = len(values)
            self._persisted[key] = persisted
            self._cache[key] = st
        self.pending.clear()

    def _write_chunks(self, hashes: list[int], done: int, name: Any) -> None:
        for chunk in range(done // ID_CHUNK, (len(hashes) + ID_CHUNK - 1) // ID_CHUNK):
            self.table[name(chunk)] = hashes[chunk * ID_CHUNK : (chunk + 1) * ID_CHUNK]

    def drop(self, key: str) -> None:
        """Delete a state and its chunks from the table (tombstones in the changelog)."""
        wire = self.table.get(key)
        chunk_keys: list[str] = []
        if isinstance(wire, dict):
            ic = wire.get("ic", 0)
            chunk_keys.extend(ids_key(key, c) for c in _chunks(ic if isinstance(ic, int) else 0))
            dc = wire.get("dc")
            for i, n in enumerate(dc if isinstance(dc, list) else ()):
                if isinstance(n, int):
                    chunk_keys.extend(values_key(key, i, c) for c in _chunks(n))
        chunk_keys.append(samples_key(key))
        for k in chunk_keys:
            if k in self.table:
                del self.table[k]
        if key in self.table:
            del self.table[key]
        self.pending.pop(key, None)
        self._cache.pop(key, None)
        self._persisted.pop(key, None)
        self._samples.pop(key, None)

    def forget(self) -> None:
        """After a rebalance: the table is the truth again."""
        self._cache.clear()
        self._persisted.clear()
        self._samples.clear()

    def window_keys(self) -> list[str]:
        """The window keys held (in the table, and buffered)."""
        keys = [k for k in list(self.table.keys()) if isinstance(k, str) and k[:1] != "~"]
        keys.extend(k for k in self.pending if k not in self.table)
        return keys

    def load_clock(self, partition: int) -> int:
        """A detect partition's retention clock as kept (0 when none)."""
        stored = self.table.get(clock_key(partition))
        clock = stored.get("clock") if isinstance(stored, dict) else None
        return clock if isinstance(clock, int) else 0

    def save_clock(self, partition: int, clock_ms: int) -> None:
        """Keep a detect partition's retention clock (written at once: it only moves on)."""
        self.table[clock_key(partition)] = {"clock": clock_ms}

    def entries_by_rule(self) -> dict[str, int]:
        """Number of states held per rule id."""
        return dict(Counter(k.split("|", 1)[0] for k in list(self.table.keys()) if k[:1] != "~"))


def _sample_ids(samples: list[dict[str, Any]]) -> list[str]:
    return [str(x.get("event_id")) for x in samples]


@dataclass(slots=True)
class Detected:
    """What one stage-2 message produced."""

    alerts: list[tuple[Alert, int]] = field(default_factory=list)  # (alert, kafka ts ms)
    updates: list[Alert] = field(default_factory=list)  # `update` revisions (SPEC 5)
    matches: Counter[str] = field(default_factory=Counter)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    processed: int = 0
    duplicate: int = 0
    error: int = 0


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


@dataclass(slots=True)
class Swept:
    """What a detect partition's clock made due: revisions to send, then keys to drop."""

    revisions: list[Alert] = field(default_factory=list)  # `closed` revisions
    drops: list[str] = field(default_factory=list)


class DetectStage:
    """Runs the account-scoped and org-scoped rules on routed items.

    Each detect partition has its own retention clock: the low watermark of the input
    partitions (SPEC 4.1), learnt from the watermark records that every ingest sends to every
    detect partition after the forwards they cover. The window lifecycle (streams/core/state.py,
    the same as replay's) keeps it in the table (`clock_key`), so it survives restarts and
    rebalances and never moves back, and decides from it what closes and what is dropped.
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
        self.lifecycle = WindowLifecycle(self.store, lambda gk: destination(gk, partitions))
        self.marks: dict[int, dict[int, tuple[int, bool]]] = {}  # detect p -> input p -> mark
        self.set_rules(rules)

    def set_rules(self, rules: RuleSet) -> None:
        """Detect by these rules from the next message on (SPEC 4.3).

        A rule whose version is unchanged finds its windows under the same keys and goes on;
        a changed one looks up other keys, so it starts afresh; the states of versions no
        longer in force (changed, removed or disabled rules) are dropped by `sweep`,
        partition by partition, as the detect agent passes there.
        """
        self.lifecycle.set_rules(rules.rules)
        self.detectors = {
            "a": Detector(rules, self.store, "account_id", self.lifecycle, self.exceptions),
            "o": Detector(rules, self.store, "org_id", self.lifecycle, self.exceptions),
        }
        self.classification = rules.classification
        self.rules_sha256 = rules.sha256

    @property
    def clocks(self) -> dict[int, int]:
        """The retention clock of each detect partition known."""
        return self.lifecycle.clocks()

    @staticmethod
    def is_watermark(value: bytes) -> bool:
        """Whether a stage-2 message is a watermark record (not forwards)."""
        return not is_forwards(value)

    def clock(self, partition: int) -> int:
        """The retention clock of a detect partition (0 before anything is known)."""
        return self.lifecycle.clock(partition)

    def report(self, partition: int, value: bytes) -> bool:
        """Apply a watermark record; True when the partition's clock moved (and was stored)."""
        mark = Watermark.from_wire(value)
        marks = self.marks.setdefault(partition, {})
        for p, wm, idle in mark.marks:
            marks[p] = (wm, idle)
        low = low_watermark(mark.inputs, marks)
        if low is None:
            return False
        return self.lifecycle.advance(partition, low)

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
            out.updates.extend(obs.updates)
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
        """After a rebalance: clocks and lifecycle indexes are read from the table again."""
        self.store.forget()
        self.lifecycle.forget()
        self.marks.clear()

    def sweep(self, partition: int) -> Swept:
        """What `partition`'s clock makes due (`Detector.sweep`): the `closed` revisions to
        send, recorded in the buffered states (flush them once the revisions were
        acknowledged), and the keys to drop after that (expired, and of retired versions).

        Called for every stage-2 message; closing and expiry run only when the clock moved.
        """
        revisions, drops = self.detectors["a"].sweep(partition)
        return Swept(revisions, drops)

    def expired_keys(self, partition: int) -> list[str]:
        """The keys `sweep` would drop, its revisions discarded (for tests and tools)."""
        return self.sweep(partition).drops
