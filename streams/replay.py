"""`frwatch replay`: archived events through the same detection core, no Kafka."""

from __future__ import annotations

import gzip
import io
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol, TextIO

import orjson

from streams import __version__
from streams.archive import expand_archives, iter_lines, open_archive
from streams.core.classify import EnrichedEvent
from streams.core.engine import Detector, Observation
from streams.core.exceptions import ExceptionsInForce
from streams.core.rules import RuleSet
from streams.core.state import MemoryWindowStore
from topics.accounts import AccountDirectory, AccountRecord, parse_account_record
from topics.alerts import Alert
from topics.dlq import Rejection
from topics.exceptions import ExceptionSet
from topics.formats import SKIPPED, InputFormat
from topics.requests import RejectedRecord, RequestEvent, decode_request_message


@dataclass(slots=True)
class ReplaySummary:
    """The closing JSON line of a replay."""

    events: int = 0
    malformed: int = 0
    duplicates: int = 0
    alerts: int = 0
    seconds: float = 0.0
    #: records that the input format declares not to be requests (SPEC 2.4)
    skipped: int = 0
    #: valid records that `--since/--until/--account/--org` left out
    unselected: int = 0

    @property
    def selected(self) -> int:
        """Valid records evaluated (all of them when no selection was given)."""
        return self.events - self.malformed - self.skipped - self.unselected

    def to_json(self) -> str:
        """One JSON line for stderr."""
        return orjson.dumps(
            {
                "events": self.events,
                "malformed": self.malformed,
                "skipped": self.skipped,
                "selected": self.selected,
                "duplicates": self.duplicates,
                "alerts": self.alerts,
                "seconds": round(self.seconds, 3),
            }
        ).decode()


def load_accounts(path: str, warn: Callable[[str], None]) -> AccountDirectory:
    """Account records (JSON lines) applied in file order; a bad line is warned about and skipped."""
    directory = AccountDirectory()
    fh = open_archive(path)
    for n, line in iter_lines(path, fh):
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            warn(f"{path}:{n}: account record skipped: not_json: {exc}")
            continue
        rec = parse_account_record(obj)
        if isinstance(rec, Rejection):
            warn(
                f"{path}:{n}: account record skipped: {rec.reason}"
                f"{f' ({rec.field})' if rec.field else ''}: {rec.detail}"
            )
            continue
        directory.apply(rec)
    return directory


class Progress:
    """Records, rate and (for files) ETA on a terminal, at most a few times a second.

    Progress through files is measured in bytes read of their total size (gzip: compressed
    bytes), so the ETA needs no first pass to count lines; stdin has no size and no ETA.
    """

    def __init__(self, stream: TextIO, interval: float = 0.5) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.interval = interval
        self.started = time.monotonic()
        self.next_at = self.started + interval
        self.total_bytes: int | None = None
        self._done_bytes = 0  # of the files already read
        self._current: Callable[[], int] | None = None
        self._current_size = 0

    def expect(self, paths: Sequence[str]) -> None:
        """The inputs about to be read, for the ETA (none when one is stdin or not a file)."""
        if not self.enabled:
            return
        try:
            self.total_bytes = None if "-" in paths else sum(os.path.getsize(p) for p in paths)
        except OSError:
            self.total_bytes = None

    def reading(self, path: str, fh: BinaryIO) -> None:
        """The next input file is `path`, open as `fh`."""
        if self._current is not None:
            self._done_bytes += self._current_size
        self._current = position_of(fh)
        try:
            self._current_size = os.path.getsize(path) if path != "-" else 0
        except OSError:
            self._current_size = 0

    def tick(self, summary: ReplaySummary) -> None:
        """Redraw the status line when it is due."""
        now = time.monotonic()
        if not self.enabled or now < self.next_at:
            return
        self.next_at = now + self.interval
        elapsed = max(now - self.started, 1e-9)
        rate = summary.events / elapsed
        line = (
            f"replay: {summary.events:,} records ({rate:,.0f}/s), "
            f"{summary.malformed:,} malformed, {summary.alerts:,} alerts"
        )
        if self.total_bytes and self._current is not None:
            read = min(self._done_bytes + self._current(), self.total_bytes)
            share = read / self.total_bytes
            bar = "#" * int(share * 20)
            eta = (self.total_bytes - read) * elapsed / read if read else 0.0
            line = f"[{bar:<20}] {share:4.0%} " + line + f", ETA {_duration(eta)}"
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()

    def done(self) -> None:
        """Clear the status line."""
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


def position_of(fh: BinaryIO) -> Callable[[], int]:
    """Bytes of the file on disk read so far through `fh` (for gzip: compressed bytes)."""
    raw: object = fh
    if isinstance(raw, io.BufferedReader) and isinstance(raw.raw, gzip.GzipFile):
        raw = raw.raw.fileobj
    tell = getattr(raw, "tell", None)

    def position() -> int:
        try:
            return int(tell()) if tell is not None else 0
        except (OSError, ValueError):
            return 0

    return position


class ReplayTap(Protocol):
    """Sees every evaluated event and what it did (`--compare-rules`, `--report`)."""

    def observed(self, ee: EnrichedEvent, obs: Observation) -> None:
        """Called after the detector observed `ee`."""

    def finished(self) -> None:
        """Called once at the end of the input."""


def replay_detector(
    rules: RuleSet, exceptions: ExceptionSet | None = None, scope: str | None = None
) -> Detector:
    """The detector of a replay (and of its shadow run and its shards): in memory, with the
    exceptions applied by event time (SPEC 4.4)."""
    in_force = ExceptionsInForce(exceptions) if exceptions else None
    return Detector(rules, MemoryWindowStore(), scope, exceptions=in_force)


def replay(
    archives: Iterable[tuple[str, BinaryIO]],
    rules: RuleSet,
    accounts: AccountDirectory,
    out: BinaryIO,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.time,
    input_format: InputFormat | None = None,
    select: Callable[[RequestEvent, AccountRecord | None], bool] | None = None,
    taps: Sequence[ReplayTap] = (),
    exceptions: ExceptionSet | None = None,
) -> ReplaySummary:
    """Run every record of the archives, in order, through one detector; write every alert
    revision to `out` (`summary.alerts` counts the alerts, their open revisions).

    `input_format`: how to map records of another schema (None: frwatch's own, SPEC 2.4).
    `select`: which valid records are evaluated (None: all); the others never reach the
    detector, so the result is that of an archive holding only the selected records.
    `taps`: told of every evaluated event (streams.investigate).
    `exceptions`: applied by event time, as live (SPEC 4.4; None: none).
    """
    detector = replay_detector(rules, exceptions)
    summary = ReplaySummary()
    started = time.perf_counter()
    get_account = accounts.get
    classification = rules.classification
    observe = detector.observe
    expire = detector.expire
    ticking = progress is not None and progress.enabled
    decode = decode_request_message if input_format is None else input_format.decode_message

    def write(revisions: list[Alert]) -> None:
        """Every revision of an alert, as it is made (open, update, closed: SPEC 5)."""
        for alert in revisions:
            out.write(alert.to_json("replay", int(clock() * 1000), __version__))
            out.write(b"\n")

    if ticking:
        archives = list(archives)
        progress.expect([p for p, _ in archives])  # type: ignore[union-attr]
    for path, fh in archives:
        if ticking:
            progress.reading(path, fh)  # type: ignore[union-attr]
        for _, line in iter_lines(path, fh):
            for rec in decode(line):
                summary.events += 1
                if type(rec) is RejectedRecord:
                    if rec is SKIPPED:
                        summary.skipped += 1
                    else:
                        summary.malformed += 1
                    continue
                account = get_account(rec.account_id)  # type: ignore[union-attr]
                if select is not None and not select(rec, account):  # type: ignore[arg-type]
                    summary.unselected += 1
                    continue
                ee = EnrichedEvent(rec, account, classification)  # type: ignore[arg-type]
                obs = observe(ee)
                if obs.duplicate:
                    summary.duplicates += 1
                if obs.alerts:
                    summary.alerts += len(obs.alerts)
                    write(obs.alerts)
                if obs.updates:
                    write(obs.updates)
                for tap in taps:
                    tap.observed(ee, obs)
                closed = expire()
                if closed:
                    write(closed)
            if ticking:
                progress.tick(summary)  # type: ignore[union-attr]
    # end of input: every window that fired is closed (SPEC 5)
    write(detector.close_all())
    for tap in taps:
        tap.finished()
    out.flush()
    if progress is not None:
        progress.done()
    summary.seconds = time.perf_counter() - started
    return summary


def open_all(paths: list[str]) -> list[tuple[str, BinaryIO]]:
    """Open every archive before processing starts, so a bad path fails before any output.

    An archive directory stands for its files, in the archive's order (streams.archive).
    """
    if paths.count("-") > 1:
        raise ValueError("stdin (-) may be named once")
    return expand_archives(paths)


def stderr_progress() -> Progress:
    """Progress on stderr (silent when stderr is not a terminal)."""
    return Progress(sys.stderr)
