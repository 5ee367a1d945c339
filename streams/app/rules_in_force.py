"""The rules a worker runs, and how they change while it runs (SPEC 4.3).

Three sources: a rules file (re-read on SIGHUP), the built-in catalog, or the compacted
rules topic (`FRWATCH_RULES=kafka:`, `RulesFeed`). Every new version is validated here; one
that fails is refused, logged and counted, and the version in force stays. Listeners (the
router, the detect stage, the metrics, the screening processes) switch synchronously, so
between two input messages; unchanged rules keep their window state because state is keyed
by rule version, changed ones start afresh, removed ones are dropped by the detect stage.
No Faust here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from aiokafka import ConsumerRecord

from streams.app.topic_feed import CompactedTopicFeed
from streams.core.rules import RulesError, RuleSet, builtin_rules_bytes, parse_rules

log = logging.getLogger(__name__)

#: the key of the rules topic's one record (SPEC 1)
RULES_KEY = b"current"
APPLIED = "applied"
REFUSED = "refused"


class RulesInForce:
    """The current RuleSet and its bytes; `offer` a new version, listeners follow."""

    def __init__(self, rules: RuleSet, data: bytes) -> None:
        self.rules = rules
        self.data = data
        self.changes = {APPLIED: 0, REFUSED: 0}
        self._listeners: list[Callable[[RuleSet, bytes], None]] = []

    def listen(self, listener: Callable[[RuleSet, bytes], None]) -> None:
        """Call `listener(rules, data)` on every change from now on."""
        self._listeners.append(listener)

    def offer(self, data: bytes, source: str) -> bool:
        """Validate `data` and put it in force; False when refused or unchanged."""
        try:
            rules = parse_rules(data, source)
        except RulesError as exc:
            self.changes[REFUSED] += 1
            log.error(
                "rules change refused, the rules in force (sha256 %s) stay: %s",
                self.rules.sha256,
                exc,
            )
            return False
        if rules.sha256 == self.rules.sha256:
            log.info("rules from %s unchanged (sha256 %s)", source, rules.sha256)
            return False
        before = {r.id: r.version for r in self.rules.rules}
        self.rules, self.data = rules, data
        self.changes[APPLIED] += 1
        for listener in self._listeners:
            listener(rules, data)
        after = {r.id: r.version for r in rules.rules}
        log.warning(
            "rules changed to sha256 %s from %s: %d continue, %d changed (afresh), "
            "%d new, %d removed",
            rules.sha256,
            source,
            sum(1 for k, v in after.items() if before.get(k) == v),
            sum(1 for k, v in after.items() if k in before and before[k] != v),
            sum(1 for k in after if k not in before),
            sum(1 for k in before if k not in after),
        )
        return True

    def reload_file(self, path: str | None) -> bool:
        """SIGHUP: read the rules file again (the built-in catalog when `path` is None)."""
        if path is None:
            return self.offer(builtin_rules_bytes(), "builtin:catalog.yaml")
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            self.changes[REFUSED] += 1
            log.error("rules change refused, cannot read %s: %s", path, exc.strerror or exc)
            return False
        return self.offer(data, path)


def rules_snapshot(directory: Path, rules: RuleSet, data: bytes) -> Path:
    """The bytes of a version in force, written where screening processes can load them."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"rules-{rules.sha256[:16]}.yaml"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


class RulesFeed(CompactedTopicFeed):
    """`FRWATCH_RULES=kafka:`: the rules topic, read whole before requests flow, then followed.

    During the catch-up only the last valid version counts (earlier ones were replaced); a
    version that arrives afterwards is offered as it comes.
    """

    client_id = "frwatch-rules"
    what = "rules"

    def __init__(self, bootstrap: list[str], topic: str, rules: RulesInForce, **kwargs: object):
        super().__init__(bootstrap, topic, **kwargs)  # type: ignore[arg-type]
        self.rules = rules
        self._latest: tuple[bytes, str] | None = None

    def apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Offer a deployed version (before `ready`: remember the last valid one)."""
        source = f"kafka:{record.topic}[{record.partition}]@{record.offset}"
        if record.key != RULES_KEY:
            log.warning("%s: ignored: its key is not %r", source, RULES_KEY.decode())
            return
        if record.value is None:
            log.warning("%s: ignored: a tombstone is no rules file", source)
            return
        if self.ready.is_set():
            self.rules.offer(record.value, source)
            return
        try:
            parse_rules(record.value, source)
        except RulesError as exc:
            log.error("%s: a deployed version that does not validate is ignored: %s", source, exc)
            return
        self._latest = (record.value, source)

    def applied(self) -> None:
        """At the end of the catch-up: the last valid deployed version goes in force."""
        if not self.ready.is_set() and self._latest is not None:
            self.rules.offer(*self._latest)
            self._latest = None
