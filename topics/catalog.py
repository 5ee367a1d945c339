"""The topic catalog: every topic frwatch reads or writes, with its settings."""

from __future__ import annotations

from dataclasses import dataclass

WEEK_MS = 7 * 86_400_000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic as `frwatch topics create` makes it."""

    name: str
    role: str
    partitions: int
    config: dict[str, str]
    internal: bool = False


def detect_topic_name(app_id: str) -> str:
    """Stage-2 topic: routed records, batched per partition."""
    return f"{app_id}-detect"


def windows_table_name() -> str:
    """The window-state table; Faust names its changelog `<app_id>-windows-changelog`."""
    return "windows"


def topic_catalog(
    topics: dict[str, str], app_id: str, partitions: int, requests_partitions: int | None = None
) -> list[TopicSpec]:
    """Public and internal topics with partitions and retention/compaction settings."""
    return [
        TopicSpec(
            topics["requests"],
            "requests",
            requests_partitions or partitions,
            {"retention.ms": str(WEEK_MS)},
        ),
        TopicSpec(
            topics["accounts"],
            "accounts",
            1,
            {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
        ),
        # compacted by alert_id, and deleted after 90 days: a repeated alert replaces itself
        TopicSpec(
            topics["alerts"],
            "alerts",
            3,
            {"cleanup.policy": "compact,delete", "retention.ms": str(90 * 86_400_000)},
        ),
        TopicSpec(topics["dlq"], "dlq", 1, {"retention.ms": str(30 * 86_400_000)}),
        # compacted: the latest exception per id, and the latest deployed rules file
        *(
            TopicSpec(topics[role], role, 1, {"cleanup.policy": "compact"})
            for role in ("exceptions", "rules")
            if role in topics
        ),
        TopicSpec(
            detect_topic_name(app_id),
            "internal",
            partitions,
            {"retention.ms": str(WEEK_MS)},
            internal=True,
        ),
        TopicSpec(
            f"{app_id}-{windows_table_name()}-changelog",
            "internal",
            partitions,
            {"cleanup.policy": "compact"},
            internal=True,
        ),
    ]
