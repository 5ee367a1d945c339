"""`frwatch publish` line accounting (no Kafka): line numbers over several archives, the
messages that carry each line, and which lines count as sent, refused or not sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from streams.cli.publish_lines import (
    LineIndex,
    LineLedger,
    MessageBuilder,
    Outgoing,
    numbered_lines,
    outgoing,
)


def rec(i: int) -> dict[str, Any]:
    return {"event_id": f"e-{i}", "ts": i, "account_id": f"acct-{i % 2}", "operation": "o"}


def write(path: Path, raw: bytes) -> str:
    path.write_bytes(raw)
    return str(path)


def test_line_numbers_count_every_physical_line_of_every_archive(tmp_path: Path) -> None:
    a = write(tmp_path / "a.jsonl", b"one\n\n  \nfour\r\n")
    b = write(tmp_path / "b.jsonl", b"five\nsix")  # no final newline
    c = write(tmp_path / "c.jsonl", b"")
    d = write(tmp_path / "d.jsonl", b"\nnine\n")
    index = LineIndex()
    got = [(x.number, x.path, x.line_in_file, x.text) for x in numbered_lines([a, b, c, d], index)]
    assert got == [
        (1, a, 1, b"one"),
        (4, a, 4, b"four"),
        (5, b, 1, b"five"),
        (6, b, 2, b"six"),
        (8, d, 2, b"nine"),
    ]
    assert index.where(4) == f"{a}:4"
    assert index.where(6) == f"{b}:2"
    assert index.where(8) == f"{d}:2"


def lines_of(tmp_path: Path, rows: list[Any]) -> list[str]:
    raw = b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows)
    return [write(tmp_path / "a.jsonl", raw)]


def test_each_line_is_sent_once_all_its_messages_are_acknowledged(tmp_path: Path) -> None:
    rows: list[Any] = [rec(0), {"records": [rec(1), rec(2), rec(3)]}, rec(4), b"not json"]
    ledger = LineLedger()
    msgs = list(outgoing(numbered_lines(lines_of(tmp_path, rows)), 2, ledger))
    for m in msgs:
        ledger.made(m)
    # [rec0, rec1] [rec2, rec3] [not json, alone] [rec4, at the end]
    assert [m.lines for m in msgs] == [(1, 2), (2,), (4,), (3,)]
    assert [m.closes for m in msgs] == [(1,), (2,), (4,), (3,)]
    ledger.settled(msgs[0], refused=False)
    assert ledger.sent == 1 and ledger.first_not_sent() == 2  # line 2 waits for its rest
    ledger.settled(msgs[3], refused=False)
    assert ledger.sent == 2 and ledger.first_not_sent() == 2
    assert ledger.sent_after(2) == 1  # line 3, sent out of order
    ledger.settled(msgs[2], refused=True)
    assert ledger.refused == [4] and ledger.first_not_sent() == 2
    ledger.settled(msgs[1], refused=False)
    assert ledger.sent == 3 and ledger.first_not_sent() is None and ledger.unsettled == 0


def test_an_empty_batch_line_counts_as_sent_and_a_waiting_batch_does_not(tmp_path: Path) -> None:
    ledger = LineLedger()
    builder = MessageBuilder(3, ledger)
    lines = list(numbered_lines(lines_of(tmp_path, [{"records": []}, rec(1), rec(2)])))
    made: list[Outgoing] = []
    for line in lines:
        made += builder.add(line)
    assert made == [] and ledger.sent == 1  # the empty batch: nothing to send
    assert ledger.first_not_sent() == 2  # read, waiting in the part-filled batch
    (last,) = builder.finish()
    ledger.made(last)
    ledger.settled(last, refused=False)
    assert ledger.sent == 3 and ledger.last_read == 3


def test_without_batch_one_message_per_line_keyed_by_account(tmp_path: Path) -> None:
    msgs = list(outgoing(numbered_lines(lines_of(tmp_path, [rec(0), b"[1]", rec(1)])), None))
    assert [(m.key, m.lines) for m in msgs] == [(b"acct-0", (1,)), (None, (2,)), (b"acct-1", (3,))]
    assert msgs[1].value == b"[1]"
