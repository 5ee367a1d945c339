"""The layout of a directory that `frwatch archive` writes, and how replay reads it back.

    DIR/frwatch-archive.json                       marker: {"schema": ..., "topic": ...}
    DIR/2026-11-18T07/p0003-00000000000000012345.jsonl.gz
        hour (of the Kafka timestamp, UTC) / partition - offset of the file's first message

One line per message: its value as sent, or, for a value that a line cannot hold as it is,
an escape line (`escape_value`). No file, disk or clock access outside the functions that
say so; the writer is `streams.archiver`.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import gzip
import os
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

MARKER = "frwatch-archive.json"
SCHEMA = "frwatch.archive/v1"
HOUR_MS = 3_600_000
#: an escape line starts with exactly these bytes; a value that does is escaped itself
ESCAPE_PREFIX = b'{"frwatch.archive.b64":'
_HOUR_FMT = "%Y-%m-%dT%H"
_WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")  # what bytes.strip() removes
_HOUR_DIR = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}")
_FILE = re.compile(r"p(\d{4,})-(\d{20})\.jsonl\.gz")
_TEMP = re.compile(r"\.p(\d{4,})-(\d{20})\.jsonl\.gz\.(\d+)\.tmp")


class ArchiveError(OSError):
    """An archive that cannot be opened or read; the message names the file."""


@dataclass(frozen=True, slots=True, order=True)
class ArchivedFile:
    """One complete file of an archive: its hour, partition and first offset (its name)."""

    hour_ms: int
    partition: int
    first_offset: int
    path: Path


def hour_of(kafka_ts_ms: int) -> int:
    """Start (epoch ms) of the UTC hour holding a Kafka timestamp."""
    return kafka_ts_ms - kafka_ts_ms % HOUR_MS


def hour_dir_name(hour_ms: int) -> str:
    """`2026-11-18T07` for the hour starting at `hour_ms` (UTC)."""
    return time.strftime(_HOUR_FMT, time.gmtime(hour_ms // 1000))


def hour_from_name(name: str) -> int | None:
    """The hour start (epoch ms) a directory name stands for; None if it is no hour dir."""
    if not _HOUR_DIR.fullmatch(name):
        return None
    try:
        return calendar.timegm(time.strptime(name, _HOUR_FMT)) * 1000
    except ValueError:
        return None


def file_name(partition: int, first_offset: int) -> str:
    """`p0003-00000000000000012345.jsonl.gz`: sorts by partition, then offset."""
    return f"p{partition:04d}-{first_offset:020d}.jsonl.gz"


def temp_name(partition: int, first_offset: int, pid: int) -> str:
    """The name a file is written under until it is complete (hidden, with the writer's pid)."""
    return f".{file_name(partition, first_offset)}.{pid}.tmp"


def parse_file_name(name: str) -> tuple[int, int] | None:
    """(partition, first offset) of a complete file's name, None for any other name."""
    m = _FILE.fullmatch(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_temp_name(name: str) -> tuple[int, int, int] | None:
    """(partition, first offset, writer pid) of a temp file's name, None otherwise."""
    m = _TEMP.fullmatch(name)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


# --- lines ------------------------------------------------------------------------------


def line_safe(value: bytes) -> bool:
    """Whether a value can be its own line: replay reads it back byte for byte.

    Not: an empty or blank value (readers skip blank lines), one holding LF or CR (it
    would split, or lose its end), invalid UTF-8 (not a text line), or one that begins
    like an escape line.
    """
    if not value or b"\n" in value or b"\r" in value or value.startswith(ESCAPE_PREFIX):
        return False
    if value[0] in _WHITESPACE and not value.strip():  # strip() copies: only when it may be blank
        return False
    if value.isascii():  # most values: no decoding needed
        return True
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def escape_value(value: bytes | None) -> bytes:
    """The archive line of a message value (without its LF).

    A line-safe value is the line. Any other is `{"frwatch.archive.b64":"<base64>"}`, and a
    null value (a tombstone) `{"frwatch.archive.b64":null}`.
    """
    if value is not None and line_safe(value):
        return value
    if value is None:
        return ESCAPE_PREFIX + b"null}"
    return ESCAPE_PREFIX + b'"' + base64.b64encode(value) + b'"}'


def unescape_line(line: bytes) -> bytes | None:
    """The message value an archive line stands for (None: a null value)."""
    if not line.startswith(ESCAPE_PREFIX):
        return line
    try:
        encoded = orjson.loads(line)["frwatch.archive.b64"]
        return None if encoded is None else base64.b64decode(encoded, validate=True)
    except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error):
        raise ValueError("a damaged escape line") from None


# --- reading ----------------------------------------------------------------------------


def marker_bytes(topic: str) -> bytes:
    """The marker file's contents."""
    return orjson.dumps({"schema": SCHEMA, "topic": topic}) + b"\n"


def read_marker(root: Path) -> dict[str, object] | None:
    """The marker of an archive directory, None if `root` has none (raises on a bad one)."""
    try:
        data = (root / MARKER).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ArchiveError(f"{root}: cannot read {MARKER}: {exc.strerror or exc}") from None
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ArchiveError(f"{root}: {MARKER} is not a {SCHEMA} marker")
    return doc


def is_archive_dir(path: str) -> bool:
    """Whether `path` is a directory written by `frwatch archive`."""
    p = Path(path)
    return p.is_dir() and (p / MARKER).is_file()


def in_archive_dir(path: str) -> bool:
    """Whether `path` names a complete file inside an archive directory."""
    p = Path(path)
    return (
        parse_file_name(p.name) is not None
        and hour_from_name(p.parent.name) is not None
        and (p.parent.parent / MARKER).is_file()
    )


def archived_files(root: Path) -> list[ArchivedFile]:
    """Every complete file of an archive, in the archive's order.

    Hour by hour; within an hour, partition by partition, each partition's files by offset.
    Replay's retention clock is the highest event time so far, so reading one partition over
    all hours before the next would run the clock ahead of the others by the whole archive.
    Temp files (a writer at work, or one that died) are left out.
    """
    if read_marker(root) is None:
        raise ArchiveError(f"{root}: not an archive directory (no {MARKER})")
    found: list[ArchivedFile] = []
    try:
        hours = list(os.scandir(root))
    except OSError as exc:
        raise ArchiveError(f"{root}: cannot list: {exc.strerror or exc}") from None
    for entry in hours:
        hour = hour_from_name(entry.name)
        if hour is None or not entry.is_dir():
            continue
        try:
            names = os.listdir(entry.path)
        except OSError as exc:
            raise ArchiveError(f"{entry.path}: cannot list: {exc.strerror or exc}") from None
        for name in names:
            parsed = parse_file_name(name)
            if parsed is not None:
                found.append(ArchivedFile(hour, parsed[0], parsed[1], Path(entry.path) / name))
    found.sort()
    return found


class ArchiveFile:
    """One file of an archive directory, opened when it is read and closed at its end.

    Replay opens every input before it starts: an archive of a month holds more files than a
    process may keep open, so each is only checked here (it exists and is readable) and
    opened in turn. Iterating gives the decoded message values.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        if not os.access(path, os.R_OK):
            raise ArchiveError(f"{path}: cannot open: not readable")
        self._raw: BinaryIO | None = None
        self._size = 0

    def tell(self) -> int:
        """Bytes of the file on disk read so far (replay's progress and ETA)."""
        raw = self._raw
        if raw is None:
            return 0
        if raw.closed:
            return self._size
        return raw.tell()

    def values(self) -> Iterator[tuple[int, bytes]]:
        """(line number, message value) of every line; a null value reads as empty, as the
        worker reads it."""
        path = self.path
        try:
            with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as fh:
                self._raw = raw
                for n, line in enumerate(fh, start=1):
                    if line.endswith(b"\n"):
                        line = line[:-1]
                    if line.startswith(ESCAPE_PREFIX):
                        try:
                            value = unescape_line(line)
                        except ValueError as exc:
                            raise ArchiveError(f"{path}:{n}: {exc}") from None
                        line = b"" if value is None else value
                    yield n, line
                self._size = raw.tell()
        except (OSError, EOFError, zlib.error) as exc:
            if isinstance(exc, ArchiveError):
                raise
            raise ArchiveError(f"{path}: cannot read: {exc}") from None

    def __iter__(self) -> Iterator[bytes]:
        """The decoded values (a reader that treats this as a file of lines gets values)."""
        for _, value in self.values():
            yield value

    def close(self) -> None:
        """Nothing stays open between reads."""


def as_archive_file(fh: object) -> ArchiveFile | None:
    """The ArchiveFile behind an input that replay's `open_all` gave, None for a stream."""
    return fh if type(fh) is ArchiveFile else None
