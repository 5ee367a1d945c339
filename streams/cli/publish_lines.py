"""What `frwatch publish` sends, line by line: numbered archive lines, the messages built from
them, and the ledger that says which lines Kafka has (pure: no Kafka, no clock)."""

from __future__ import annotations

import bisect
import collections
import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from streams.archive import ArchiveError
from streams.archive_layout import as_archive_file
from streams.replay import open_all
from topics.requests import batch_envelope, is_batch


@dataclass(frozen=True, slots=True)
class ArchiveLine:
    """A non-blank line (or a message of an archive directory, which may be blank); `number`
    counts physical lines over every archive, in order, from 1."""

    number: int
    path: str
    line_in_file: int
    text: bytes


@dataclass(eq=False, slots=True)
class Outgoing:
    """One message to send, with the archive lines it carries records of."""

    key: bytes | None
    value: bytes
    lines: tuple[int, ...]
    closes: tuple[int, ...]  # lines whose last record is in this message


class LineIndex:
    """Where a line number is: (archive, line in that archive), for messages to people."""

    def __init__(self) -> None:
        self._starts: list[int] = []  # line number before each archive's first line
        self._paths: list[str] = []

    def begin(self, path: str, offset: int) -> None:
        """An archive whose first line is line offset + 1."""
        self._starts.append(offset)
        self._paths.append(path)

    def where(self, number: int) -> str | None:
        """ "path:n" of line `number`, None before any archive was opened."""
        i = bisect.bisect_left(self._starts, number) - 1
        if i < 0:
            return None
        return f"{self._paths[i]}:{number - self._starts[i]}"


def numbered_lines(paths: list[str], index: LineIndex | None = None) -> Iterator[ArchiveLine]:
    """Every non-blank line of the archives, in order; all are opened and checked at once,
    before the first line is asked for (raises ArchiveError or ValueError)."""
    return _numbered(open_all(paths), index)


def _numbered(opened: list[tuple[str, BinaryIO]], index: LineIndex | None) -> Iterator[ArchiveLine]:
    offset = 0
    for name, fh in opened:
        if index is not None:
            index.begin(name, offset)
        n = 0
        archived = as_archive_file(fh)
        if archived is not None:
            # a file of an archive directory: one message value a line, sent as it was
            # archived (a blank or multi-line value too)
            for n, value in archived.values():
                yield ArchiveLine(offset + n, name, n, value)
            offset += n
            continue
        try:
            for n, raw in enumerate(fh, start=1):
                text = raw.rstrip(b"\r\n")
                if text.strip():
                    yield ArchiveLine(offset + n, name, n, text)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise ArchiveError(f"{name}: cannot read: {exc}") from None
        offset += n


def key_of(obj: Any) -> bytes | None:
    """The message key of a request line: its account_id, where it has a string one."""
    acct = obj.get("account_id") if isinstance(obj, dict) else None
    return acct.encode() if isinstance(acct, str) else None


def outgoing(
    lines: Iterator[ArchiveLine], batch: int | None, ledger: LineLedger | None = None
) -> Iterator[Outgoing]:
    """Messages for `publish`: lines as they are, or K records per batch envelope."""
    builder = MessageBuilder(batch, ledger)
    for line in lines:
        yield from builder.add(line)
    yield from builder.finish()


class MessageBuilder:
    """Builds `publish`'s messages a line at a time: each line as it is, or K records per
    batch envelope (batch lines split into their records first; lines that are not JSON
    objects on their own, ahead of the records still waiting to fill a batch).

    The ledger (if given) learns of each line as it is read and of the messages that carry
    it as they are made, so a line still waiting in a part-filled batch is not yet sent.
    """

    def __init__(self, batch: int | None, ledger: LineLedger | None = None) -> None:
        self.batch = batch
        self.ledger = ledger
        self._records: list[bytes] = []
        self._owners: list[int] = []  # the line of each waiting record

    def add(self, line: ArchiveLine) -> list[Outgoing]:
        """The messages that `line` completes (none while a batch is filling)."""
        if self.ledger is not None:
            self.ledger.read(line.number)
        if self.batch is None:
            try:
                key = key_of(orjson.loads(line.text))
            except orjson.JSONDecodeError:
                key = None
            return [_alone(line, key)]
        try:
            obj = orjson.loads(line.text)
        except orjson.JSONDecodeError:
            return [_alone(line, None)]  # not JSON: on its own, exactly as archived
        if not isinstance(obj, dict):
            return [_alone(line, None)]
        if is_batch(obj) and isinstance(obj["records"], list):
            try:
                split = [orjson.dumps(r) for r in obj["records"]]
            except orjson.JSONEncodeError:  # nested deeper than orjson writes: as it is
                return [_alone(line, None)]
            if not split and self.ledger is not None:
                self.ledger.close_empty(line.number)  # no record: nothing to send
            self._records.extend(split)
            self._owners.extend([line.number] * len(split))
        else:
            self._records.append(line.text)
            self._owners.append(line.number)
        out = []
        while len(self._records) >= self.batch:
            out.append(self._take(self.batch))
        return out

    def finish(self) -> list[Outgoing]:
        """The last, part-filled batch (at the end of the input)."""
        return [self._take(len(self._records))] if self._records else []

    def _take(self, k: int) -> Outgoing:
        records, owners = self._records, self._owners
        carried = tuple(dict.fromkeys(owners[:k]))
        left = set(owners[k:])
        msg = Outgoing(
            None,
            batch_envelope(records[:k]),
            carried,
            tuple(n for n in carried if n not in left),
        )
        del records[:k], owners[:k]
        return msg


def _alone(line: ArchiveLine, key: bytes | None) -> Outgoing:
    return Outgoing(key, line.text, (line.number,), (line.number,))


@dataclass
class LineLedger:
    """Which archive lines Kafka has: a line is sent once every message carrying one of its
    records is acknowledged, refused once Kafka refused one of them for good."""

    sent: int = 0
    refused: list[int] = field(default_factory=list)  # line numbers, in the order refused
    last_read: int = 0
    _open: dict[int, int] = field(default_factory=dict)  # line -> messages not settled
    _closed: set[int] = field(default_factory=set)  # lines whose every message is made
    _refused: set[int] = field(default_factory=set)
    _recent: collections.deque[int] = field(default_factory=collections.deque)
    _sent_recent: set[int] = field(default_factory=set)

    def read(self, number: int) -> None:
        """A line was read from the archive."""
        self._open[number] = 0
        self._recent.append(number)
        self.last_read = number

    def close_empty(self, number: int) -> None:
        """A line with no record to send: sent as soon as it is read."""
        self._closed.add(number)
        self._finish_if_done(number)

    def made(self, msg: Outgoing) -> None:
        """A message was built (before it is first sent)."""
        for n in msg.lines:
            self._open[n] += 1
        self._closed.update(msg.closes)

    def settled(self, msg: Outgoing, refused: bool) -> None:
        """A message was acknowledged (or refused for good, never to be sent)."""
        for n in msg.lines:
            self._open[n] -= 1
            if refused and n not in self._refused:
                self._refused.add(n)
                self.refused.append(n)
        for n in msg.lines:
            self._finish_if_done(n)

    def _finish_if_done(self, n: int) -> None:
        if self._open.get(n) != 0 or n not in self._closed:
            return
        del self._open[n]
        self._closed.discard(n)
        if n not in self._refused:
            self.sent += 1
            self._sent_recent.add(n)
        # lines below the first unsettled one are of no more interest
        recent = self._recent
        while recent and recent[0] not in self._open:
            self._sent_recent.discard(recent.popleft())

    def first_not_sent(self) -> int | None:
        """The first line read but not sent (refused lines aside), None if there is none."""
        waiting = [n for n in self._open if n not in self._refused]
        return min(waiting) if waiting else None

    def sent_after(self, number: int) -> int:
        """How many lines after `number` were sent (a resume from `number` sends them again)."""
        return sum(1 for n in self._sent_recent if n > number)

    @property
    def unsettled(self) -> int:
        """Lines read and not yet sent or refused."""
        return len(self._open)
