"""The alerts a replay wrote, as a consumer of the alerts topic keeps them: the latest revision.

Every message about one alert_id is a revision (SPEC 5); consumers keep the highest
`revision`. Alerts without that field (one message per alert) are kept as they are.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

import orjson


class AlertBook:
    """The latest revision of every alert_id seen, in order of first appearance."""

    def __init__(self) -> None:
        self._latest: dict[str, dict[str, Any]] = {}

    def add(self, doc: dict[str, Any]) -> None:
        """Keep `doc` unless a higher revision of its alert_id is already here."""
        aid = doc["alert_id"]
        held = self._latest.get(aid)
        if held is None or int(doc.get("revision", 0)) >= int(held.get("revision", 0)):
            self._latest[aid] = doc

    def __len__(self) -> int:
        return len(self._latest)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._latest.values())

    def get(self, alert_id: str) -> dict[str, Any] | None:
        """The latest revision of `alert_id`, if it fired."""
        return self._latest.get(alert_id)

    def by_rule(self) -> dict[str, dict[str, dict[str, Any]]]:
        """rule_id -> alert_id -> latest revision."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for doc in self._latest.values():
            out.setdefault(doc["rule_id"], {})[doc["alert_id"]] = doc
        return out


class _AlertTee(io.RawIOBase):
    """Passes alert lines through to `sink` (if any) and files each one in the book."""

    def __init__(self, sink: BinaryIO | None, book: AlertBook) -> None:
        super().__init__()
        self._sink = sink
        self._book = book
        self._partial = b""

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        if self._sink is not None:
            self._sink.write(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                self._book.add(orjson.loads(line))
        return len(data)

    def flush(self) -> None:
        if self._sink is not None:
            self._sink.flush()


def recording(sink: BinaryIO | None, book: AlertBook) -> BinaryIO:
    """An output for `replay` that writes to `sink` (None: nowhere) and fills `book`.

    Reading the alerts back from what the replay writes, rather than from the detector,
    keeps the book equal to the output whatever revisions the replay emits.
    """
    return cast(BinaryIO, _AlertTee(sink, book))
