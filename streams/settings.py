"""Settings: `FRWATCH_*` environment variables, overridden by flags; frozen and validated."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# FRWATCH_INSTANCE_ID value that turns static group membership off
NO_INSTANCE_ID = "none"
# FRWATCH_RULES value that makes workers follow the rules topic (SPEC 4.3)
RULES_FROM_KAFKA = "kafka:"
# FRWATCH_MODE values: a live worker, or one re-running an archive from a replay topic
MODES = ("live", "replay")
# what Kafka accepts as group.instance.id
_INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]{1,249}")


class SettingsError(ValueError):
    """A setting with an invalid value; the message names the variable."""


# (field, environment variable, default, help) — the single list the CLI and docs are built from
SETTINGS: tuple[tuple[str, str, str, str], ...] = (
    (
        "broker",
        "FRWATCH_BROKER",
        "kafka://127.0.0.1:9092",
        "bootstrap servers: kafka://host:port[,host:port...] or host:port[,...]",
    ),
    ("app_id", "FRWATCH_APP_ID", "frwatch", "consumer group and internal-topic prefix"),
    ("web_bind", "FRWATCH_WEB_BIND", "127.0.0.1", "address of the HTTP server serving /metrics"),
    ("web_port", "FRWATCH_WEB_PORT", "6066", "port of the HTTP server serving /metrics"),
    ("topic_requests", "FRWATCH_TOPIC_REQUESTS", "api.requests", "input request events"),
    ("topic_accounts", "FRWATCH_TOPIC_ACCOUNTS", "api.accounts", "compacted account metadata"),
    ("topic_alerts", "FRWATCH_TOPIC_ALERTS", "frwatch.alerts", "alerts for SOC analysts"),
    ("topic_dlq", "FRWATCH_TOPIC_DLQ", "frwatch.dlq", "rejected input (dead letters)"),
    (
        "topic_exceptions",
        "FRWATCH_TOPIC_EXCEPTIONS",
        "frwatch.exceptions",
        "compacted exceptions (SPEC 4.4)",
    ),
    ("topic_rules", "FRWATCH_TOPIC_RULES", "frwatch.rules", "compacted deployed rules (SPEC 4.3)"),
    (
        "rules",
        "FRWATCH_RULES",
        "",
        "rules file (default: the built-in catalog; kafka: follows the rules topic)",
    ),
    (
        "input_format",
        "FRWATCH_INPUT_FORMAT",
        "frwatch",
        "input format (SPEC 2.4): frwatch, azure-resource-log or a format file",
    ),
    ("store", "FRWATCH_STORE", "memory://", "Faust table store (rocksdb:// for production)"),
    (
        "data_dir",
        "FRWATCH_DATA_DIR",
        "",
        "the worker's data directory, rocksdb:// tables included (default: <app_id>-data"
        " in the working directory); one per worker",
    ),
    (
        "instance_id",
        "FRWATCH_INSTANCE_ID",
        "",
        "static consumer-group member id, stable across restarts (default: host name and a"
        " hash of the data directory; none: dynamic membership)",
    ),
    (
        "partitions",
        "FRWATCH_PARTITIONS",
        "4",
        "partitions of the internal topics and window tables (fixed for an app id)",
    ),
    (
        "kafka_config",
        "FRWATCH_KAFKA_CONFIG",
        "",
        "Kafka client properties file (librdkafka names, as for kcat -F; default: plaintext)",
    ),
    (
        "screening_processes",
        "FRWATCH_SCREENING_PROCESSES",
        "1",
        "helper processes that decode and validate input beside the worker (0: none)",
    ),
    (
        "idle_after",
        "FRWATCH_IDLE_AFTER",
        "300",
        "seconds without input after which a requests partition stops holding the"
        " retention clock back (SPEC 4.1)",
    ),
    (
        "mode",
        "FRWATCH_MODE",
        "live",
        "live, or replay for a worker that re-runs an archive published to a replay topic"
        " (its own app id): no future-timestamp check, alerts carry mode replay",
    ),
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a frwatch process needs to reach Kafka and serve metrics."""

    broker: str
    app_id: str
    web_bind: str
    web_port: int
    topic_requests: str
    topic_accounts: str
    topic_alerts: str
    topic_dlq: str
    rules: str | None
    store: str
    partitions: int
    screening_processes: int
    idle_after: int = 300
    kafka_config: str | None = None
    data_dir: str | None = None
    instance_id: str | None = None
    topic_exceptions: str = "frwatch.exceptions"
    topic_rules: str = "frwatch.rules"
    #: a built-in format's name or a format file (docs/input-formats.md)
    input_format: str = "frwatch"
    #: `live`, or `replay`: no future-timestamp check, alerts say `mode: replay` (SPEC 6)
    mode: str = "live"

    @property
    def replay_mode(self) -> bool:
        """FRWATCH_MODE=replay: the input is an archive, not traffic of the wall clock's now."""
        return self.mode == "replay"

    @property
    def rules_from_kafka(self) -> bool:
        """`FRWATCH_RULES=kafka:`: the rules in force follow the rules topic (SPEC 4.3)."""
        return self.rules == RULES_FROM_KAFKA

    @property
    def data_path(self) -> Path:
        """The worker's data directory (Faust's `datadir`), absolute."""
        return Path(self.data_dir or f"{self.app_id}-data").absolute()

    @property
    def group_instance_id(self) -> str | None:
        """The worker's static group member id, or None for dynamic membership.

        Default: the host name and a hash of the data directory. A worker killed and
        started again (same host, same directory) takes its place in the group back at
        once, instead of waiting for the old member's session to time out; two workers on
        one host differ by their data directories, which they may not share anyway.
        """
        if self.instance_id == NO_INSTANCE_ID:
            return None
        if self.instance_id:
            return self.instance_id
        digest = hashlib.sha256(str(self.data_path).encode()).hexdigest()[:12]
        host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:200] or "host"
        return f"{host}-{digest}"

    @property
    def idle_after_ms(self) -> int:
        """`idle_after` in milliseconds."""
        return self.idle_after * 1000

    @property
    def bootstrap_servers(self) -> list[str]:
        """`host:port` entries for aiokafka."""
        return [h for h in (p.strip() for p in self.broker.split(",")) if h]

    @property
    def faust_broker(self) -> str:
        """The broker URL list in Faust's form (`kafka://h:p;kafka://h:p`)."""
        return ";".join(f"kafka://{h}" for h in self.bootstrap_servers)

    def topics(self) -> dict[str, str]:
        """The public topic names by role."""
        return {
            "requests": self.topic_requests,
            "accounts": self.topic_accounts,
            "alerts": self.topic_alerts,
            "dlq": self.topic_dlq,
            "exceptions": self.topic_exceptions,
            "rules": self.topic_rules,
        }


def _validated(raw: Mapping[str, str]) -> Settings:
    def env_name(field: str) -> str:
        return next(e for f, e, _, _ in SETTINGS if f == field)

    def bounded(field: str, low: int, high: int) -> int:
        text = raw[field].strip()
        if not text.isdigit() or not low <= int(text) <= high:
            raise SettingsError(f"{env_name(field)}: {text!r} is not {low}..{high}")
        return int(text)

    broker = raw["broker"].strip()
    hosts = []
    for part in broker.split(","):
        part = part.strip()
        if part.startswith("kafka://"):
            part = part[len("kafka://") :]
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(f"{env_name('broker')}: {part!r} is not host:port")
        hosts.append(f"{host}:{port}")
    port_text = raw["web_port"].strip()
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise SettingsError(f"{env_name('web_port')}: {port_text!r} is not a port number")
    partitions = bounded("partitions", 1, 1024)
    screening_processes = bounded("screening_processes", 0, 64)
    idle_after = bounded("idle_after", 1, 86_400)
    for f in (
        "app_id",
        "topic_requests",
        "topic_accounts",
        "topic_alerts",
        "topic_dlq",
        "topic_exceptions",
        "topic_rules",
    ):
        if not raw[f].strip():
            raise SettingsError(f"{env_name(f)} must not be empty")
    if not raw["store"].strip():
        raise SettingsError(f"{env_name('store')} must not be empty")
    instance_id = raw["instance_id"].strip()
    if instance_id and not _INSTANCE_ID.fullmatch(instance_id):
        raise SettingsError(
            f"{env_name('instance_id')}: {instance_id!r} is not 1..249 of A-Z a-z 0-9 . _ -"
        )
    mode = raw["mode"].strip().lower() or "live"
    if mode not in MODES:
        raise SettingsError(f"{env_name('mode')}: {mode!r} is not one of {', '.join(MODES)}")
    return Settings(
        broker=",".join(hosts),
        app_id=raw["app_id"].strip(),
        web_bind=raw["web_bind"].strip() or "127.0.0.1",
        web_port=int(port_text),
        topic_requests=raw["topic_requests"].strip(),
        topic_accounts=raw["topic_accounts"].strip(),
        topic_alerts=raw["topic_alerts"].strip(),
        topic_dlq=raw["topic_dlq"].strip(),
        topic_exceptions=raw["topic_exceptions"].strip(),
        topic_rules=raw["topic_rules"].strip(),
        rules=raw["rules"].strip() or None,
        store=raw["store"].strip(),
        partitions=partitions,
        screening_processes=screening_processes,
        idle_after=idle_after,
        kafka_config=raw["kafka_config"].strip() or None,
        data_dir=raw["data_dir"].strip() or None,
        instance_id=instance_id or None,
        input_format=raw["input_format"].strip() or "frwatch",
        mode=mode,
    )


def settings_from_env(
    env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Settings from the environment (default: os.environ), then flag overrides."""
    env = os.environ if env is None else env
    raw = {f: env.get(var, default) for f, var, default, _ in SETTINGS}
    for k, v in (overrides or {}).items():
        if v is not None:
            raw[k] = str(v)
    return _validated(raw)
