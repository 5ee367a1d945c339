"""`frwatch replay`: archived events through the same detection core, no Kafka."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO, TextIO

import orjson

from streams import __version__
from streams.archive import iter_lines, open_archive
from streams.core.classify import EnrichedEvent
from streams.core.engine import Detector
from streams.core.rules import RuleSet
from streams.core.state import MemoryWindowStore
from topics.accounts import AccountDirectory, parse_account_record
from topics.alerts import Alert
from topics.dlq import Rejection
from topics.formats import SKIPPED, InputFormat
from topics.requests import RejectedRecord, decode_request_message


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

    def to_json(self) -> str:
        """One JSON line for stderr."""
        return orjson.dumps(
            {
                "events": self.events,
                "malformed": self.malformed,
                "skipped": self.skipped,
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
    """Events/s and alerts so far on a terminal, at most a few times a second."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.started = time.monotonic()
        self.next_at = self.started + 0.5

    def tick(self, summary: ReplaySummary) -> None:
        """Redraw the status line when it is due."""
        now = time.monotonic()
        if not self.enabled or now < self.next_at:
            return
        self.next_at = now + 0.5
        rate = summary.events / max(now - self.started, 1e-9)
        self.stream.write(
            f"\rreplay: {summary.events:,} events ({rate:,.0f}/s), "
            f"{summary.malformed:,} malformed, {summary.alerts:,} alerts"
        )
        self.stream.flush()

    def done(self) -> None:
        """Clear the status line."""
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def replay(
    archives: Iterable[tuple[str, BinaryIO]],
    rules: RuleSet,
    accounts: AccountDirectory,
    out: BinaryIO,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.time,
    input_format: InputFormat | None = None,
) -> ReplaySummary:
    """Run every record of the archives, in order, through one detector; write every alert
    revision to `out` (`summary.alerts` counts the alerts, their open revisions).

    `input_format`: how to map records of another schema (None: frwatch's own, SPEC 2.4).
    """
    detector = Detector(rules, MemoryWindowStore())
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

    for path, fh in archives:
        for _, line in iter_lines(path, fh):
            for rec in decode(line):
                summary.events += 1
                if type(rec) is RejectedRecord:
                    if rec is SKIPPED:
                        summary.skipped += 1
                    else:
                        summary.malformed += 1
                    continue
                obs = observe(EnrichedEvent(rec, get_account(rec.account_id), classification))  # type: ignore[union-attr,arg-type]
                if obs.duplicate:
                    summary.duplicates += 1
                if obs.alerts:
                    summary.alerts += len(obs.alerts)
                    write(obs.alerts)
                if obs.updates:
                    write(obs.updates)
                closed = expire()
                if closed:
                    write(closed)
            if ticking:
                progress.tick(summary)  # type: ignore[union-attr]
    # end of input: every window that fired is closed (SPEC 5)
    write(detector.close_all())
    out.flush()
    if progress is not None:
        progress.done()
    summary.seconds = time.perf_counter() - started
    return summary


def open_all(paths: list[str]) -> list[tuple[str, BinaryIO]]:
    """Open every archive before processing starts, so a bad path fails before any output."""
    if paths.count("-") > 1:
        raise ValueError("stdin (-) may be named once")
    return [(p, open_archive(p)) for p in paths]


def stderr_progress() -> Progress:
    """Progress on stderr (silent when stderr is not a terminal)."""
    return Progress(sys.stderr)
