"""The disk side of `frwatch archive`: files per partition and hour, complete before commit.

No Kafka here. The consumer (`streams.archiver`) hands in messages; this module writes them
to temp files, completes a file (gzip end, fsync, rename, fsync of the directory) when its
hour ends, its size or age bound is reached, or its partition is revoked, and says which
offsets may be committed: only those of complete files.

Names come from offsets (`streams.archive_layout`): a file started again at the same offset
after a crash replaces the old one. A restart may cut its files at other offsets (other
bounds, another batching), so when a partition's first message after an assignment arrives,
every file of that partition at or after that offset is removed first: such a file was
complete but its offsets were never committed, and its messages are being read again.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from streams.archive_layout import (
    HOUR_MS,
    MARKER,
    ArchiveError,
    escape_value,
    file_name,
    hour_dir_name,
    hour_from_name,
    marker_bytes,
    parse_file_name,
    parse_temp_name,
    read_marker,
    temp_name,
)

log = logging.getLogger(__name__)

DAY_MS = 24 * HOUR_MS
#: gzip level 6: about as small as 9 on JSON lines, at several times the speed
COMPRESS_LEVEL = 6


@dataclass(frozen=True, slots=True)
class ArchiveConfig:
    """Where and how `frwatch archive` writes (validated by the CLI)."""

    root: Path
    topic: str
    #: hours older than this many days (by their Kafka timestamps) are removed; None: kept
    keep_days: int | None = None
    #: a file is completed once it holds this many bytes of lines (uncompressed) ...
    max_file_bytes: int = 64 << 20
    #: ... or has been open this long, so that commits advance when traffic is slow
    max_file_seconds: float = 60.0


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(slots=True)
class OpenFile:
    """A file being written under its temp name."""

    partition: int
    hour_ms: int
    first_offset: int
    temp: Path
    final: Path
    opened_at: float
    first_ts_ms: int
    raw: BinaryIO
    gz: gzip.GzipFile
    next_offset: int = 0
    records: int = 0
    value_bytes: int = 0  # of the values as sent
    line_bytes: int = 0  # of the lines written (escapes are longer), before compression
    pending: list[bytes] = field(default_factory=list)

    def flush_pending(self) -> None:
        """Hand the lines gathered so far to gzip (one write per batch, not per message)."""
        if self.pending:
            self.gz.write(b"".join(self.pending))
            self.pending.clear()


@dataclass(frozen=True, slots=True)
class Completed:
    """A file made complete: what the metrics count."""

    path: Path
    partition: int
    records: int
    value_bytes: int
    file_bytes: int
    next_offset: int


class ArchiveWriter:
    """Files per (partition, hour); `commits()` gives the offsets that complete files cover."""

    def __init__(
        self,
        config: ArchiveConfig,
        clock: Callable[[], float] = time.monotonic,
        pid: int | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.pid = os.getpid() if pid is None else pid
        self.open: dict[int, OpenFile] = {}
        #: partitions whose files were reconciled since they were assigned
        self.started: set[int] = set()
        #: partition -> offset to commit (complete files up to it), not yet committed
        self.to_commit: dict[int, int] = {}
        self.completed: list[Completed] = []
        self.removed_on_restart = 0

    # --- the directory ---------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the archive directory and its marker, or check that it archives our topic."""
        root = self.config.root
        try:
            root.mkdir(parents=True, exist_ok=True)
            marker = read_marker(root)
        except ArchiveError:
            raise
        except OSError as exc:
            raise ArchiveError(f"{root}: cannot create: {exc.strerror or exc}") from None
        if marker is None:
            tmp = root / f".{MARKER}.{self.pid}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(marker_bytes(self.config.topic))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, root / MARKER)
            fsync_dir(root)
        elif marker.get("topic") != self.config.topic:
            raise ArchiveError(
                f"{root}: archives topic {marker.get('topic')!r}, not {self.config.topic!r}"
            )

    def begin_partition(self, partition: int, offset: int) -> int:
        """Before the first message (at `offset`) of a partition after an assignment: remove
        its files at or after `offset` (complete but never committed) and its temp files.
        Returns how many files were removed."""
        removed = 0
        for hour_dir in self._hour_dirs():
            touched = False
            for name in os.listdir(hour_dir):
                parsed = parse_file_name(name)
                temp = parse_temp_name(name)
                stale = (parsed is not None and parsed[0] == partition and parsed[1] >= offset) or (
                    temp is not None and temp[0] == partition
                )
                if stale:
                    (hour_dir / name).unlink(missing_ok=True)
                    removed += parsed is not None
                    touched = True
            if touched:
                fsync_dir(hour_dir)
        if removed:
            log.warning(
                "partition %d: removed %d file(s) at or after offset %d: complete, but their "
                "offsets were not committed (a crash); they are being written again",
                partition,
                removed,
                offset,
            )
        self.removed_on_restart += removed
        self.started.add(partition)
        return removed

    def _hour_dirs(self) -> list[Path]:
        root = self.config.root
        return sorted(
            root / e.name
            for e in os.scandir(root)
            if e.is_dir() and hour_from_name(e.name) is not None
        )

    def remove_dead_temps(self, alive: Callable[[int], bool]) -> int:
        """Remove temp files whose writer is not running (a writer killed mid-file)."""
        n = 0
        for hour_dir in self._hour_dirs():
            for name in os.listdir(hour_dir):
                temp = parse_temp_name(name)
                if temp is not None and temp[2] != self.pid and not alive(temp[2]):
                    (hour_dir / name).unlink(missing_ok=True)
                    n += 1
        return n

    # --- messages --------------------------------------------------------------------------

    def add(self, partition: int, offset: int, kafka_ts_ms: int, value: bytes | None) -> None:
        """One message, in its partition's offset order."""
        if partition not in self.started:
            self.begin_partition(partition, offset)
        hour = max(kafka_ts_ms, 0) // HOUR_MS * HOUR_MS
        f = self.open.get(partition)
        if f is not None and f.hour_ms != hour:
            self.complete(partition)  # the hour ended (or the producer's clock went back)
            f = None
        if f is None:
            f = self._open(partition, hour, offset, kafka_ts_ms)
        line = escape_value(value)
        f.pending.append(line + b"\n")
        f.records += 1
        f.value_bytes += 0 if value is None else len(value)
        f.line_bytes += len(line) + 1
        f.next_offset = offset + 1
        if f.line_bytes >= self.config.max_file_bytes:
            self.complete(partition)

    def _open(self, partition: int, hour: int, offset: int, kafka_ts_ms: int) -> OpenFile:
        hour_dir = self.config.root / hour_dir_name(hour)
        if not hour_dir.is_dir():
            hour_dir.mkdir(exist_ok=True)
            fsync_dir(self.config.root)
        temp = hour_dir / temp_name(partition, offset, self.pid)
        raw = open(temp, "wb")  # noqa: SIM115 - closed by complete() or discard()
        # no name and mtime 0 in the gzip header: the same messages give the same bytes
        gz = gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, compresslevel=COMPRESS_LEVEL, mtime=0
        )
        f = OpenFile(
            partition,
            hour,
            offset,
            temp,
            hour_dir / file_name(partition, offset),
            self.clock(),
            kafka_ts_ms,
            raw,
            gz,
            next_offset=offset,
        )
        self.open[partition] = f
        return f

    def flush(self) -> None:
        """After a batch: every open file's lines to gzip."""
        for f in self.open.values():
            f.flush_pending()

    def complete(self, partition: int) -> Completed | None:
        """Finish the partition's open file: written, fsynced, renamed, directory fsynced;
        only then are its offsets up for commit."""
        f = self.open.pop(partition, None)
        if f is None:
            return None
        f.flush_pending()
        f.gz.close()
        f.raw.flush()
        os.fsync(f.raw.fileno())
        size = f.raw.tell()
        f.raw.close()
        os.replace(f.temp, f.final)
        fsync_dir(f.final.parent)
        done = Completed(f.final, partition, f.records, f.value_bytes, size, f.next_offset)
        self.completed.append(done)
        self.to_commit[partition] = f.next_offset
        log.debug(
            "%s: %d records, offsets %d..%d", f.final, f.records, f.first_offset, f.next_offset - 1
        )
        return done

    def complete_due(self) -> None:
        """Complete the files open longer than the interval bound."""
        now = self.clock()
        for p in [
            p for p, f in self.open.items() if now - f.opened_at >= self.config.max_file_seconds
        ]:
            self.complete(p)

    def complete_all(self, partitions: set[int] | None = None) -> None:
        """Complete every open file (of `partitions`): at a revocation or a clean stop."""
        for p in list(self.open):
            if partitions is None or p in partitions:
                self.complete(p)

    def revoked(self, partitions: set[int]) -> None:
        """After the revoked partitions' files were completed and committed: forget them."""
        self.started -= partitions
        for p in partitions:
            self.to_commit.pop(p, None)

    def discard(self, partition: int) -> None:
        """Drop an open file unfinished (its messages will be read again)."""
        f = self.open.pop(partition, None)
        if f is not None:
            with contextlib.suppress(OSError):
                f.raw.close()
            f.temp.unlink(missing_ok=True)

    def commits(self) -> dict[int, int]:
        """The offsets that may be committed now (complete files); taken."""
        out, self.to_commit = self.to_commit, {}
        return out

    def take_completed(self) -> list[Completed]:
        """Files completed since the last call."""
        out, self.completed = self.completed, []
        return out

    # --- retention -------------------------------------------------------------------------

    def remove_expired(self, now_ms: int) -> list[Path]:
        """Remove the hours that ended more than `keep_days` before `now_ms` (no open file)."""
        if self.config.keep_days is None:
            return []
        limit = now_ms - self.config.keep_days * DAY_MS
        busy = {f.hour_ms for f in self.open.values()}
        gone = []
        for hour_dir in self._hour_dirs():
            hour = hour_from_name(hour_dir.name)
            if hour is None or hour + HOUR_MS > limit or hour in busy:
                continue
            shutil.rmtree(hour_dir, ignore_errors=True)
            gone.append(hour_dir)
        if gone:
            fsync_dir(self.config.root)
        return gone
