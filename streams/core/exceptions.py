"""The exceptions a detector applies, and the hits they had (SPEC 4.4). Pure: no I/O, no clock.

The detector asks `covers(rule_id, event)` after a rule's match holds; a covered event is not
counted by that rule, and the hit is tallied per exception id here (metrics read the tally
at scrape time). The set in force is replaced whole when the exceptions change (live: the
exceptions topic; replay: the file, once).
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from streams.core.classify import EnrichedEvent
from topics.exceptions import NO_EXCEPTIONS, ExceptionSet


class ExceptionFilter(Protocol):
    """What `Detector` needs: whether an exception keeps an event from a rule."""

    def covers(self, rule_id: str, ee: EnrichedEvent) -> bool:
        """True when an exception keeps this event from the rule (the hit is counted)."""


class ExceptionsInForce:
    """The current ExceptionSet and the hits of each exception id so far."""

    __slots__ = ("_any", "current", "hits")

    def __init__(self, exceptions: ExceptionSet = NO_EXCEPTIONS) -> None:
        self.current = exceptions
        self._any = bool(exceptions.exceptions)  # the common case: one attribute read
        self.hits: Counter[str] = Counter()

    def replace(self, exceptions: ExceptionSet) -> None:
        """Apply these from the next event on (hits of removed ids are kept: counters)."""
        self.current = exceptions
        self._any = bool(exceptions.exceptions)

    def covers(self, rule_id: str, ee: EnrichedEvent) -> bool:
        """True (and a hit counted) when an exception in force keeps the event from the rule."""
        if not self._any:
            return False
        found = self.current.covers(rule_id, ee)
        if found is None:
            return False
        self.hits[found] += 1
        return True
