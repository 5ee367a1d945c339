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
from streams.core.rules import RuleSet
from streams.core.state import WindowState, split_window_key
from streams.core.windows import is_expired
from topics.accounts import AccountRecord
from topics.alerts import Alert
from topics.dlq import INTERNAL_ERROR, DeadLetter, Rejection
from topics.requests import RequestEvent, parse_request_record


class TableWindowStore:
    """WindowStore over a mapping of wire dicts, with a write buffer flushed after acks."""

    def __init__(self, table: MutableMapping[str, Any]) -> None:
        self.table = table
        self.pending: dict[str, WindowState] = {}
        self.created: list[str] = []  # keys new since the last `take_created`

    def get(self, key: str) -> WindowState | None:
        """Buffered state first, then the table."""
        st = self.pending.get(key)
        if st is not None:
            return st
        wire = self.table.get(key)
        return WindowState.from_wire(wire) if wire is not None else None

    def put(self, key: str, state: WindowState) -> None:
        """Buffer a write until `flush`."""
        if key not in self.pending and key not in self.table:
            self.created.append(key)
        self.pending[key] = state

    def flush(self) -> None:
        """Write buffered states to the table (its changelog)."""
        for key, st in self.pending.items():
            self.table[key] = st.to_wire()
        self.pending.clear()

    def expire(self, watermark_ms: int) -> int:
        """Not used live: expiry runs per partition (see DetectStage.expired_keys)."""
        return 0

    def entries_by_rule(self) -> dict[str, int]:
        """Number of states held per rule id."""
        return dict(Counter(k.split("|", 1)[0] for k in list(self.table.keys())))


@dataclass(slots=True)
class Detected:
    """What one stage-2 message produced."""

    alerts: list[tuple[Alert, int]] = field(default_factory=list)  # (alert, kafka ts ms)
    matches: Counter[str] = field(default_factory=Counter)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    processed: int = 0
    duplicate: int = 0
    error: int = 0


class DetectStage:
    """Runs the account-scoped and org-scoped rules on routed items."""

    def __init__(self, rules: RuleSet, table: MutableMapping[str, Any], partitions: int) -> None:
        self.store = TableWindowStore(table)
        self.partitions = partitions
        self.detectors = {
            "a": Detector(rules, self.store, "account_id"),
            "o": Detector(rules, self.store, "org_id"),
        }
        self.watermarks: dict[int, int] = {}
        self._ends: dict[int, list[tuple[int, str]]] = {}  # partition -> heap of (end, key)

    def observe(self, value: bytes, topic: str, partition: int, offset: int) -> Detected:
        """Every item of one stage-2 message."""
        out = Detected()
        wm = self.watermarks.get(partition, 0)
        for item in orjson.loads(value)["items"]:
            try:
                ev = parse_request_record(item["e"])
                if not isinstance(ev, RequestEvent):
                    raise ValueError(f"routed event failed validation: {ev}")
                wm = max(wm, ev.ts_ms)
                account = AccountRecord.from_wire(item["a"]) if item["a"] is not None else None
                obs = self.detectors[item["s"]].observe(EnrichedEvent(ev, account))
            except Exception as exc:  # a deterministic bug: dead-letter, count, go on
                out.error += item.get("c", 1)
                out.dead_letters.append(
                    DeadLetter(
                        Rejection(INTERNAL_ERROR, None, f"{type(exc).__name__}: {exc}"),
                        orjson.dumps(item.get("e")).decode(),
                        topic,
                        partition,
                        offset,
                    )
                )
                continue
            out.matches.update(obs.matched)
            if item["c"]:
                if obs.duplicate:
                    out.duplicate += 1
                else:
                    out.processed += 1
            out.alerts.extend((a, item["k"]) for a in obs.alerts)
        self.watermarks[partition] = wm
        return out

    def forget_partitions(self) -> None:
        """After a rebalance: rebuild the expiry index from the table when next needed."""
        self._ends.clear()

    def _index(self, partition: int) -> list[tuple[int, str]]:
        heap = self._ends.get(partition)
        if heap is None:  # first use since start or rebalance: index what the table holds
            heap = []
            for key in list(self.store.table.keys()):
                _, _, end, gk = split_window_key(key)
                if destination(gk, self.partitions) == partition:
                    heap.append((end, key))
            heapq.heapify(heap)
            self._ends[partition] = heap
        return heap

    def expired_keys(self, partition: int) -> list[str]:
        """Keys of `partition` whose windows event time has left more than 24h behind.

        Called for every stage-2 message, like replay's expiry after every record: a heap of
        window ends per partition makes the common case (nothing due) one comparison.
        """
        for key in self.store.created:
            _, _, end, gk = split_window_key(key)
            # a partition without an index yet finds the key in the table when it builds one
            known = self._ends.get(destination(gk, self.partitions))
            if known is not None:
                heapq.heappush(known, (end, key))
        self.store.created.clear()
        heap = self._index(partition)
        wm = self.watermarks.get(partition, 0)
        out: list[str] = []
        while heap and is_expired(heap[0][0], wm):
            _, key = heapq.heappop(heap)
            if key in self.store.table and key not in out:
                out.append(key)
        return out
