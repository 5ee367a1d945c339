"""Archive files: JSON lines, plain or gzip, or `-` for stdin, and the directories that
`frwatch archive` writes; opened and checked before use."""

from __future__ import annotations

import gzip
import io
import os
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

from streams.archive_layout import (
    ArchiveError,
    ArchiveFile,
    archived_files,
    as_archive_file,
    in_archive_dir,
    is_archive_dir,
)

__all__ = ["ArchiveError", "expand_archives", "iter_lines", "open_archive"]

GZIP_MAGIC = b"\x1f\x8b"


def expand_archives(paths: list[str]) -> list[tuple[str, BinaryIO]]:
    """Every input opened (or, for the files of archive directories, checked), in order.

    A directory written by `frwatch archive` stands for its files in the archive's order
    (`streams.archive_layout.archived_files`); one of its files named alone is read with
    its escape lines decoded too. Any other directory is an error.
    """
    out: list[tuple[str, BinaryIO]] = []
    for p in paths:
        if p != "-" and os.path.isdir(p):
            if not is_archive_dir(p):
                raise ArchiveError(f"{p}: a directory, but not one written by frwatch archive")
            for f in archived_files(Path(p)):
                out.append((str(f.path), _archive_file(str(f.path))))
        elif p != "-" and in_archive_dir(p):
            out.append((p, _archive_file(p)))
        else:
            out.append((p, open_archive(p)))
    return out


def _archive_file(path: str) -> BinaryIO:
    # read only through iter_lines (and publish's reader), which know it by its type
    return cast(BinaryIO, ArchiveFile(path))


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
    """(physical line number, line) of non-blank lines, without their LF or CRLF.

    For a file of an archive directory: (line number, message value) of every line, the
    values as sent (blank or multi-line ones too: docs/formats.md).
    """
    archived = as_archive_file(fh)
    if archived is not None:
        yield from archived.values()
        return
    try:
        for n, line in enumerate(fh, start=1):
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield n, line
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ArchiveError(f"{path}: cannot read: {exc}") from None
