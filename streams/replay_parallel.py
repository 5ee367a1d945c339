"""`frwatch replay --workers N`: N processes share one replay, with the alerts of one process.

The work has two halves, and both are shared:
- decoding: the parent cuts the input into blocks of whole lines and hands block k to
  process k mod N, which decodes, validates, enriches and classifies its records. Most
  records match no rule and end there; of the others it keeps, per scope in which a rule
  matches, a copy for the shard that owns the group key: the account-scope copy in the
  shard of the account_id, the org-scope copy in the shard of the org_id (as the live
  worker splits them, `streams.app.routing`).
- detection: process j runs the detectors of shard j over the copies of every block, in
  block order, so each (rule, group, window) is counted by one detector in input order.

The retention clock of one process is the highest event time read so far (SPEC 4.1),
which depends on every record, not only a shard's. So each kept copy carries the highest
event time of its block before it, and each block the highest of the blocks before it: a
shard sets its clock to the larger of the two before each copy, and expires then. That
gives the states of one process at every copy: a pass between two copies of a shard, at
the clock of the second, drops what one process dropped in the passes between them (no
state of the shard changed in between). The alerts are written in input order, the first
scope of a record (the one that decides a redelivery) counts its duplicate, and the summary
adds the counts of the blocks: the alerts and the summary equal one process's.
"""

from __future__ import annotations

import gzip
import multiprocessing
import queue
import time
import traceback
import zlib
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.queues import Queue
from typing import Any, BinaryIO

from streams import __version__
from streams.archive import ArchiveError
from streams.core.classify import EnrichedEvent
from streams.core.engine import SCOPE_ORDER, Detector, RuleIndex, group_key
from streams.core.rules import RuleSet
from streams.core.state import window_key
from streams.replay import Progress, ReplaySummary, replay_detector
from topics.accounts import AccountDirectory
from topics.exceptions import ExceptionSet
from topics.formats import SKIPPED, InputFormat
from topics.requests import RejectedRecord, RequestEvent, decode_request_message

#: bytes of input per block: small enough to keep every process busy, large enough that
#: the messages between processes cost little next to decoding
BLOCK_BYTES = 1 << 19
#: blocks handed out and not yet detected, per process (bounds the parent's memory)
IN_FLIGHT_PER_WORKER = 4

#: a kept copy: (record index in its block, highest event time of the block before it,
#: scope index, whether it counts the record's duplicate, the event)
Copy = tuple[int, int, int, bool, RequestEvent]


def shard_of(group: str, shards: int) -> int:
    """The shard that owns a group key (stable across processes and runs)."""
    return zlib.crc32(group.encode()) % shards


def blocks(archives: Iterable[tuple[str, BinaryIO]]) -> Iterator[bytes]:
    """The archives' bytes in blocks of whole lines (a file's last line ends its block)."""
    for path, fh in archives:
        rest = b""
        while True:
            try:
                data = fh.read(BLOCK_BYTES)
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                raise ArchiveError(f"{path}: cannot read: {exc}") from None
            if not data:
                break
            data = rest + data
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            yield data[:cut]
            rest = data[cut + 1 :]
        if rest:
            yield rest


class _Shard:
    """One process's part: decoding the blocks it is given, detecting in its shard."""

    def __init__(
        self,
        index: int,
        shards: int,
        rules: RuleSet,
        accounts: AccountDirectory,
        input_format: InputFormat | None,
        clock: Callable[[], float],
        exceptions: ExceptionSet | None = None,
    ) -> None:
        self.index = index
        self.shards = shards
        self.accounts = accounts
        self.classification = rules.classification
        self.clock = clock
        self.decode = (
            decode_request_message if input_format is None else input_format.decode_message
        )
        self.scoped = tuple(
            RuleIndex(tuple(r for r in rules.rules if r.group_by == scope)) for scope in SCOPE_ORDER
        )
        self.detectors = tuple(replay_detector(rules, exceptions, scope) for scope in SCOPE_ORDER)
        #: per (bio_kind, trait, operation, intent.label): the scopes whose rules' gates
        #: admit it, with those rules (most records: none)
        self._gates: dict[tuple[str, str, str, str | None], tuple[tuple[int, Any], ...]] = {}

    def _admitting(self, gate: tuple[str, str, str, str | None]) -> tuple[tuple[int, Any], ...]:
        found = tuple(
            (scope, rules)
            for scope, index in enumerate(self.scoped)
            if (rules := index.admitting(*gate))
        )
        if len(self._gates) < 4096:  # operation names are open-ended: bound the cache
            self._gates[gate] = found
        return found

    def decode_block(self, block: bytes) -> tuple[int, int, int, int, list[list[Copy]]]:
        """(records, malformed, skipped, highest event time, the copies for each shard)."""
        events = malformed = skipped = 0
        highest = -1
        copies: list[list[Copy]] = [[] for _ in range(self.shards)]
        get_account, classification, decode = self.accounts.get, self.classification, self.decode
        gates = self._gates
        n = 0
        for line in block.split(b"\n"):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            for rec in decode(line):
                events += 1
                if type(rec) is RejectedRecord:
                    if rec is SKIPPED:
                        skipped += 1
                    else:
                        malformed += 1
                    continue
                ev: RequestEvent = rec  # type: ignore[assignment]
                before = highest
                if ev.ts_ms > highest:
                    highest = ev.ts_ms
                n += 1
                ee = EnrichedEvent(ev, get_account(ev.account_id), classification)
                intent = ev.intent
                gate = (ee.bio_kind, ee.trait, ev.operation, intent.label if intent else None)
                scopes = gates.get(gate)
                if scopes is None:
                    scopes = self._admitting(gate)
                first = True
                for scope, rules in scopes:
                    for r in rules:
                        gk = group_key(r, ee)
                        if gk is not None and r.match(ee):
                            copies[shard_of(gk, self.shards)].append((n, before, scope, first, ev))
                            first = False
                            break
        return events, malformed, skipped, highest, copies

    def detect(self, block: int, base: int, copies: list[Copy]) -> tuple[int, list[Any]]:
        """Count a block's copies in this shard: (duplicates, [(order, is an open, alert JSON)]).

        Every revision (SPEC 5): `closed` ones due before a copy, the `open`s and `update`s
        it causes, and the `closed` ones due after it, in that order, as one process writes.
        """
        duplicates = 0
        alerts: list[Any] = []
        get_account, classification = self.accounts.get, self.classification

        def emit(order: tuple[int, ...], revisions: list[Any], opens: bool) -> None:
            for seq, alert in enumerate(revisions):
                alerts.append(
                    (
                        (*order, seq),
                        opens,
                        alert.to_json("replay", int(self.clock() * 1000), __version__),
                    )
                )

        for n, before, scope, counts, ev in copies:
            detector = self.detectors[scope]
            emit((block, n, 0, scope), self._advance(detector, max(base, before)), False)
            obs = detector.observe(EnrichedEvent(ev, get_account(ev.account_id), classification))
            if counts and obs.duplicate:
                duplicates += 1
            emit((block, n, 1, scope), obs.alerts, True)
            emit((block, n, 2, scope), obs.updates, False)
            emit((block, n, 3, scope), detector.expire(), False)
        return duplicates, alerts

    def finish(self, clock_ms: int) -> list[tuple[Any, bytes]]:
        """The end of the input: every detector at the final retention clock, then every
        window that fired closed (SPEC 5): (order, JSON) of their revisions, ordered as one
        process writes them (what the last pass closed, then by window key)."""
        out: list[tuple[Any, bytes]] = []
        now = int(self.clock() * 1000)
        for scope, detector in enumerate(self.detectors):
            for seq, a in enumerate(self._advance(detector, clock_ms)):
                out.append(((0, "", scope, seq), a.to_json("replay", now, __version__)))
            for a in detector.close_all():
                rule = detector.rule_set.by_id(a.rule_id)
                key = window_key(
                    rule.id, rule.state_version, a.window_start_ms, a.window_end_ms, a.group_key
                )
                out.append(((1, key, 0, 0), a.to_json("replay", now, __version__)))
        return out

    @staticmethod
    def _advance(detector: Detector, clock_ms: int) -> list[Any]:
        # the retention clock of the one process, which saw every record before this one
        if clock_ms > detector.watermark_ms:
            detector.watermark_ms = clock_ms
        return detector.expire()


def _serve(shard: _Shard, inbox: Queue[Any], outbox: Queue[Any]) -> None:
    """A worker process: decode and detect what the parent sends, in the order sent."""
    try:
        while True:
            msg = inbox.get()
            if msg[0] == "decode":
                outbox.put(("decoded", msg[1], shard.decode_block(msg[2])))
            elif msg[0] == "detect":
                _, k, base, copies = msg
                outbox.put(("detected", k, shard.detect(k, base, copies)))
            else:  # "finish"
                outbox.put(("finished", shard.index, shard.finish(msg[1])))
                return
    except BaseException:  # reported to the parent, which stops the replay
        outbox.put(("error", shard.index, traceback.format_exc()))


class WorkerFailed(RuntimeError):
    """A worker process failed; the message holds its traceback."""


def replay_parallel(
    archives: Iterable[tuple[str, BinaryIO]],
    rules: RuleSet,
    accounts: AccountDirectory,
    out: BinaryIO,
    workers: int,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.time,
    input_format: InputFormat | None = None,
    exceptions: ExceptionSet | None = None,
) -> ReplaySummary:
    """`streams.replay.replay` in `workers` processes: the same alerts and summary."""
    ctx = multiprocessing.get_context("fork")  # the children inherit rules and accounts
    inboxes: list[Queue[Any]] = [ctx.Queue() for _ in range(workers)]
    outbox: Queue[Any] = ctx.Queue()
    procs = [
        ctx.Process(
            target=_serve,
            args=(
                _Shard(i, workers, rules, accounts, input_format, clock, exceptions),
                inboxes[i],
                outbox,
            ),
            daemon=True,
        )
        for i in range(workers)
    ]
    summary = ReplaySummary()
    started = time.perf_counter()
    for p in procs:
        p.start()
    try:
        _run(blocks(archives), procs, inboxes, outbox, summary, out, progress)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()  # only after a failure: the others would wait forever
                p.join()
    out.flush()
    if progress is not None:
        progress.done()
    summary.seconds = time.perf_counter() - started
    return summary


def _run(
    source: Iterator[bytes],
    procs: list[Any],
    inboxes: list[Queue[Any]],
    outbox: Queue[Any],
    summary: ReplaySummary,
    out: BinaryIO,
    progress: Progress | None,
) -> None:
    workers = len(procs)
    decoded: dict[int, tuple[int, int, int, int, list[list[Copy]]]] = {}
    detected: dict[int, list[tuple[int, list[Any]]]] = {}
    sent = dispatched = written = 0  # blocks: handed out, sent to the shards, written
    clock = 0  # the highest event time of the blocks dispatched
    exhausted = False
    limit = workers * IN_FLIGHT_PER_WORKER
    try:
        while True:
            while not exhausted and sent - written < limit:
                block = next(source, None)
                if block is None:
                    exhausted = True
                    break
                inboxes[sent % workers].put(("decode", sent, block))
                sent += 1
            if exhausted and written == sent:
                break
            kind, k, result = _receive(outbox, procs)
            if kind == "decoded":
                decoded[k] = result
                while dispatched in decoded:  # the shards count the blocks in input order
                    events, malformed, skipped, highest, copies = decoded.pop(dispatched)
                    summary.events += events
                    summary.malformed += malformed
                    summary.skipped += skipped
                    for j, inbox in enumerate(inboxes):
                        inbox.put(("detect", dispatched, clock, copies[j]))
                    clock = max(clock, highest)
                    dispatched += 1
            else:
                detected.setdefault(k, []).append(result)
                while len(detected.get(written, ())) == workers:
                    alerts: list[Any] = []
                    for duplicates, found in detected.pop(written):
                        summary.duplicates += duplicates
                        alerts.extend(found)
                    alerts.sort(key=lambda a: a[0])  # the order one process writes them in
                    for _, opens, data in alerts:
                        out.write(data)
                        out.write(b"\n")
                        summary.alerts += opens
                    written += 1
            if progress is not None:
                progress.tick(summary)
        for inbox in inboxes:
            inbox.put(("finish", clock))
        closing: list[tuple[Any, bytes]] = []
        for _ in inboxes:
            closing.extend(_receive(outbox, procs)[2])
        closing.sort(key=lambda c: c[0])  # end of input: the windows that fired, closed
        for _, data in closing:
            out.write(data)
            out.write(b"\n")
    except BaseException:
        for inbox in inboxes:  # a worker that still runs stops at its next message
            inbox.put(("finish", clock))
            inbox.cancel_join_thread()  # and one that is gone must not keep the parent
        raise


def _receive(outbox: Queue[Any], procs: list[Any]) -> tuple[str, int, Any]:
    while True:
        try:
            msg = outbox.get(timeout=1.0)
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise WorkerFailed(f"replay worker exited with code {dead[0].exitcode}") from None
            continue
        if msg[0] == "error":
            raise WorkerFailed(f"replay worker {msg[1]} failed:\n{msg[2]}")
        return msg  # type: ignore[no-any-return]
