"""`frwatch alerts tail`'s display: one line per alert, updated in place on a terminal."""

from __future__ import annotations

import io
from typing import Any

from streams.cli.alert_board import AlertBoard, alert_line


def rev(aid: str, revision: int, status: str, count: int) -> dict[str, Any]:
    return {
        "alert_id": aid,
        "revision": revision,
        "status": status,
        "rule_id": "FR-001",
        "severity": "critical",
        "group_by": "account_id",
        "group_key": "acct-1",
        "observed": {"count": count, "distinct": None, "estimated": False},
        "window": {"start": "s", "end": "e"},
        "account": {},
        "title": "t",
    }


def test_not_a_terminal_appends_updated_and_closed_lines() -> None:
    out = io.StringIO()
    board = AlertBoard(out, terminal=False)
    for doc in (rev("a", 0, "open", 1), rev("b", 0, "open", 3), rev("a", 1, "update", 10)):
        board.show(doc)
    board.show(rev("a", 1, "update", 10))  # a repeat after a restart: nothing
    board.show(rev("a", 2, "closed", 42))
    lines = out.getvalue().splitlines()
    assert lines == [
        alert_line(rev("a", 0, "open", 1)),
        alert_line(rev("b", 0, "open", 3)),
        "updated " + alert_line(rev("a", 1, "update", 10)),
        "closed " + alert_line(rev("a", 2, "closed", 42)),
    ]
    assert "count=42" in lines[-1] and "status=closed rev=2" in lines[-1]


def test_on_a_terminal_a_revision_redraws_its_alerts_line() -> None:
    out = io.StringIO()
    board = AlertBoard(out, terminal=True)
    board.show(rev("a", 0, "open", 1))
    board.show(rev("b", 0, "open", 3))
    board.show(rev("a", 1, "update", 10))
    text = out.getvalue()
    # two lines printed, then up 2 to the first, redrawn, down 2 again
    assert text.count("\n") == 2
    assert text.endswith(f"\x1b[2A\r\x1b[2K{alert_line(rev('a', 1, 'update', 10))}\x1b[2B\r")


def test_status_filter() -> None:
    out = io.StringIO()
    board = AlertBoard(out, terminal=False, statuses=frozenset({"closed"}))
    board.show(rev("a", 0, "open", 1))
    board.show(rev("a", 1, "closed", 5))
    assert out.getvalue().splitlines() == [alert_line(rev("a", 1, "closed", 5))]
