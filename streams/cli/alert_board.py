"""What `frwatch alerts tail` shows: one line per alert, as its revisions arrive (SPEC 5).

On a terminal each alert keeps one line, redrawn in place when a later revision arrives;
otherwise (a pipe, a file) a later revision is appended as an `updated` or `closed` line.
No Kafka here: the tail loop hands each decoded alert document to `AlertBoard.show`.
"""

from __future__ import annotations

from typing import Any, TextIO

STATUSES = ("open", "update", "closed")
VERBS = {"update": "updated", "closed": "closed"}


def alert_line(alert: dict[str, Any]) -> str:
    """One alert revision, readable by a person."""
    obs = alert.get("observed", {}) or {}
    distinct = f" distinct={obs['distinct']}" if obs.get("distinct") is not None else ""
    estimated = "~" if obs.get("estimated") else ""
    win = alert.get("window", {}) or {}
    acct = alert.get("account", {}) or {}
    status = alert.get("status", "open")
    return (
        f"{alert.get('detected_at', '?')} {str(alert.get('severity', '?')).upper():8} "
        f"{alert.get('rule_id')} {alert.get('group_by')}={alert.get('group_key')} "
        f"window={win.get('start')}..{win.get('end')} "
        f"count={estimated}{obs.get('count')}{distinct} "
        f"sector={acct.get('sector')} country={acct.get('country')} "
        f"status={status} rev={alert.get('revision', 0)} "
        f"id={alert.get('alert_id')} :: {alert.get('title')}"
    )


class AlertBoard:
    """Alerts as a person follows them: the latest revision of each alert_id.

    `statuses`: only revisions of these statuses are shown (None: all). A revision older
    than one already shown (a repeat after a worker restart) changes nothing.
    """

    def __init__(self, out: TextIO, terminal: bool, statuses: frozenset[str] | None = None) -> None:
        self.out = out
        self.terminal = terminal
        self.statuses = statuses
        self._rows: dict[str, int] = {}  # alert_id -> its line, counted from the first
        self._revision: dict[str, int] = {}

    def show(self, alert: dict[str, Any]) -> None:
        """Draw one revision."""
        if self.statuses is not None and alert.get("status", "open") not in self.statuses:
            return
        aid = str(alert.get("alert_id"))
        revision = alert.get("revision", 0)
        if not isinstance(revision, int):
            revision = 0
        known = self._revision.get(aid)
        if known is not None and revision <= known:
            return  # a repeat, or older than what is shown
        self._revision[aid] = revision
        line = alert_line(alert)
        row = self._rows.get(aid)
        if row is None:
            self._rows[aid] = len(self._rows)
            self.out.write(line + "\n")
        elif self.terminal:
            up = len(self._rows) - row
            # up to the alert's line, redraw it, back down below the last line
            self.out.write(f"\x1b[{up}A\r\x1b[2K{line}\x1b[{up}B\r")
        else:
            self.out.write(f"{VERBS.get(str(alert.get('status')), 'updated')} {line}\n")

    def note(self, text: str) -> None:
        """A line that is not an alert (a tombstone, an unreadable message)."""
        self._rows[f"~{len(self._rows)}"] = len(self._rows)
        self.out.write(text + "\n")
