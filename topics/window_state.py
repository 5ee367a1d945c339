"""The window table's changelog value: one (rule, group, window) state, a versioned contract.

A window is written as one small value (this module) plus, under their own keys, its
event-id hashes and distinct-value hashes in fixed-size chunks and its evidence samples
(streams/app/detection.py), so that what a window writes grows linearly with the events it
counts (SPEC 4.1). The value says how many hashes its chunks hold; it never holds them.

`"v": 2` marks this shape. A value of another shape (v1 had no "v": keys f, n, c, d, s) or
one that fails these checks decodes to None and is ignored: the window starts afresh, never
an error (SPEC 4.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeGuard

VERSION = 2
STATUSES = ("open", "update", "closed")


@dataclass(slots=True)
class AlertProgress:
    """Where a fired window's alert stands (SPEC 5 lifecycle): persisted after each revision
    was acknowledged, so a restart never sends an older revision than one already sent."""

    revision: int  # the last revision sent (0: the open)
    status: str  # of that revision: open, update or closed
    fired_magnitude: int  # the magnitude at firing (distinct for a distinct rule, else count)
    next_update: int  # the magnitude at which the next `update` is due (10x, 100x, ...)
    account: dict[str, Any]  # the firing event's account block
    related: list[str] = field(default_factory=list)  # alert_ids the firing event also fired
    #: figures changed after the `closed` revision: one more `closed` when the state is dropped
    changed_after_close: bool = False

    def to_wire(self) -> dict[str, Any]:
        """JSON-able, string keys only."""
        return {
            "r": self.revision,
            "st": self.status,
            "m0": self.fired_magnitude,
            "nx": self.next_update,
            "acct": self.account,
            "rel": self.related,
            "late": self.changed_after_close,
        }

    @classmethod
    def from_wire(cls, d: Any) -> AlertProgress | None:
        """Inverse of `to_wire`; None for anything else."""
        if not isinstance(d, dict):
            return None
        r, st, m0, nx = d.get("r"), d.get("st"), d.get("m0"), d.get("nx")
        acct, rel, late = d.get("acct"), d.get("rel", []), d.get("late", False)
        if not (_nat(r) and st in STATUSES and _nat(m0) and _nat(nx)):
            return None
        if not isinstance(acct, dict) or not isinstance(rel, list) or not isinstance(late, bool):
            return None
        if any(not isinstance(x, str) for x in rel):
            return None
        return cls(r, st, m0, nx, acct, rel, late)


@dataclass(slots=True)
class WindowValue:
    """The small part of a window's state."""

    count: int  # matching events counted
    req_counts: list[int]  # per requirement: events counted (count requirements)
    ids: int  # event-id hashes held in the id chunks
    #: per requirement: distinct-value hashes held in its chunks (None: a count requirement)
    distinct: list[int | None]
    alert: AlertProgress | None = None  # None until the window fires
    estimated: bool = False  # past exact counting: count/distinct are estimates (SPEC 5)
    #: serialized sketches (base64) of event ids and of each requirement's values, once
    #: beyond exact counting
    sketches: dict[str, str] = field(default_factory=dict)

    @property
    def fired(self) -> bool:
        """Whether the window has fired."""
        return self.alert is not None

    def to_wire(self) -> dict[str, Any]:
        """The changelog value."""
        d: dict[str, Any] = {
            "v": VERSION,
            "n": self.count,
            "c": self.req_counts,
            "ic": self.ids,
            "dc": self.distinct,
            "a": self.alert.to_wire() if self.alert is not None else None,
        }
        if self.estimated:
            d["est"] = True
            d["sk"] = self.sketches
        return d

    @classmethod
    def from_wire(cls, d: Any, n_requirements: int | None = None) -> WindowValue | None:
        """Inverse of `to_wire`; None for a value of another shape or version.

        With `n_requirements`, a value counted for another number of requirements is None
        too: state never meets a rule definition it was not counted under.
        """
        if not isinstance(d, dict) or d.get("v") != VERSION:
            return None
        n, c, ic, dc = d.get("n"), d.get("c"), d.get("ic"), d.get("dc")
        if not (_nat(n) and _nat(ic) and isinstance(c, list) and isinstance(dc, list)):
            return None
        if len(c) != len(dc) or (n_requirements is not None and len(c) != n_requirements):
            return None
        if any(not _nat(x) for x in c) or any(x is not None and not _nat(x) for x in dc):
            return None
        alert = None
        if d.get("a") is not None:
            alert = AlertProgress.from_wire(d["a"])
            if alert is None:
                return None
        est, sk = d.get("est", False), d.get("sk", {})
        if not isinstance(est, bool) or not isinstance(sk, dict):
            return None
        return cls(n, list(c), ic, list(dc), alert, est, {str(k): str(v) for k, v in sk.items()})


def _nat(x: Any) -> TypeGuard[int]:
    return type(x) is int and x >= 0
