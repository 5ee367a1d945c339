"""`frwatch.alerts`: the alert SOC analysts watch (SPEC 5), keyed by alert_id."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from topics.timestamps import format_ms

SCHEMA = "frwatch.alert/v2"
STATUSES = ("open", "update", "closed")  # SPEC 5 lifecycle
MAX_SAMPLES = 10
ACCOUNT_FIELDS = ("account_id", "org_id", "org_name", "sector", "acting_for", "country")
SAMPLE_FIELDS = (
    "event_id",
    "ts",
    "operation",
    "api_key_id",
    "model",
    "region",
    "client_ip",
    "gallery",
    "capture",
    "intent",
)


def alert_id(rule_id: str, group_key: str, window_start_ms: int) -> str:
    """First 32 hex characters of sha256(`rule_id|group_key|window_start_ms`)."""
    return hashlib.sha256(f"{rule_id}|{group_key}|{window_start_ms}".encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Alert:
    """One revision of a fired (rule, group, window): `open` when it fired, `update` at 10x,
    100x, ... its magnitude at firing, `closed` with the final figures (SPEC 5). Samples hold
    request metadata with `ts` in epoch ms."""

    alert_id: str
    rule_id: str
    title: str
    clause: str
    severity: str
    group_by: str
    group_key: str
    account: dict[str, Any]
    window_start_ms: int
    window_end_ms: int
    count: int
    distinct: int | None
    samples: tuple[dict[str, Any], ...]
    #: the fired rule's version and the sha256 of the rules file it came from (SPEC 4.3)
    rule_version: str = ""
    rules_sha256: str = ""
    status: str = "open"
    revision: int = 0
    #: alert_ids of the other alerts the firing event fired for the same group
    related: tuple[str, ...] = ()
    estimated: bool = False  # count/distinct are estimates (beyond exact counting)

    def to_dict(self, mode: str, detected_at_ms: int, detector_version: str) -> dict[str, Any]:
        """The SPEC 5 document."""
        sample_ts = [s["ts"] for s in self.samples]
        samples = [{**s, "ts": format_ms(s["ts"])} for s in self.samples]
        return {
            "schema": SCHEMA,
            "alert_id": self.alert_id,
            "status": self.status,
            "revision": self.revision,
            "rule_id": self.rule_id,
            "title": self.title,
            "clause": self.clause,
            "severity": self.severity,
            "group_by": self.group_by,
            "group_key": self.group_key,
            "account": {k: self.account.get(k) for k in ACCOUNT_FIELDS},
            "window": {
                "start": format_ms(self.window_start_ms),
                "end": format_ms(self.window_end_ms),
            },
            "observed": {
                "count": self.count,
                "distinct": self.distinct,
                "estimated": self.estimated,
            },
            "evidence": {
                "first_ts": format_ms(min(sample_ts)) if sample_ts else None,
                "last_ts": format_ms(max(sample_ts)) if sample_ts else None,
                "samples": samples,
            },
            "related": list(self.related),
            "detected_at": format_ms(detected_at_ms),
            "mode": mode,
            "detector": {
                "version": detector_version,
                "rules_sha256": self.rules_sha256,
                "rule_version": self.rule_version,
            },
        }

    def to_json(self, mode: str, detected_at_ms: int, detector_version: str) -> bytes:
        """The SPEC 5 document as the alert topic's value."""
        return orjson.dumps(self.to_dict(mode, detected_at_ms, detector_version))
