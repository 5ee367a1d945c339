"""Archive files: JSON lines, plain or gzip, or `-` for stdin; opened and checked before use."""

from __future__ import annotations

import gzip
import io
import sys
import zlib
from collections.abc import Iterator
from typing import BinaryIO

GZIP_MAGIC = b"\x1f\x8b"


class ArchiveError(OSError):
    """An archive that cannot be opened or read; the message names the file."""


def open_archive(path: str) -> BinaryIO:
    """Open an archive for binary reading; gzip is recognised by its magic bytes."""
    if path == "-":
        return sys.stdin.buffer
    try:
        fh = open(path, "rb")  # noqa: SIM115 - the caller owns the handle
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot open: {exc.strerror or exc}") from None
    try:
        head = fh.peek(2)[:2]
    except OSError as exc:
        fh.close()
        raise ArchiveError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if head == GZIP_MAGIC:
        _check_gzip(path, fh)
        return io.BufferedReader(gzip.GzipFile(fileobj=fh, mode="rb"), 1 << 20)
    return fh


def _check_gzip(path: str, fh: BinaryIO) -> None:
    """Decompress the whole file once, so that a damaged archive fails before any output."""
    try:
        with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
            while gz.read(1 << 22):
                pass
        fh.seek(0)
    except (OSError, EOFError, zlib.error) as exc:
        fh.close()
        raise ArchiveError(f"{path}: not a readable gzip file: {exc}") from None


def iter_lines(path: str, fh: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(physical line number, line) of non-blank lines, without their LF or CRLF."""
    try:
        for n, line in enumerate(fh, start=1):
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield n, line
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ArchiveError(f"{path}: cannot read: {exc}") from None
