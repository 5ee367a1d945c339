"""`frwatch archive`: the requests topic copied into hourly gzip JSON-lines files.

A plain aiokafka consumer in its own group (`<app_id>-archive`), with manual commits: the
offsets of a message are committed only once the file holding it is complete on disk
(`streams.archive_writer`). A crash therefore loses nothing and, since names come from
offsets and a restart removes what was complete but not committed, writes nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    start_http_server,
)

from streams.archive_writer import ArchiveConfig, ArchiveWriter
from streams.cli.acls import archive_group
from streams.kafkaio import client_kwargs
from streams.settings import NO_INSTANCE_ID, Settings

log = logging.getLogger("frwatch.archive")

POLL_MS = 500
MAX_RECORDS = 20_000
RETENTION_EVERY_S = 60.0
STATUS_EVERY_S = 10.0


def archive_instance_id(settings: Settings, config: ArchiveConfig) -> str | None:
    """Static member id: the host and a hash of the archive directory (FRWATCH_INSTANCE_ID
    overrides; `none`: dynamic). A killed archiver started again takes its partitions back
    at once; a second archiver on the same directory fences the first."""
    if settings.instance_id == NO_INSTANCE_ID:
        return None
    if settings.instance_id:
        return settings.instance_id
    digest = hashlib.sha256(str(config.root.absolute()).encode()).hexdigest()[:12]
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:200] or "host"
    return f"{host}-archive-{digest}"


class ArchiveMetrics:
    """`frwatch_archive_*` on the archiver's own registry (docs/operations.md)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "frwatch_archive_records_total",
            "Messages written to complete archive files",
            registry=registry,
        )
        self.read = Counter(
            "frwatch_archive_read_total",
            "Messages read from the topic into archive files (complete or still open)",
            registry=registry,
        )
        self.bytes = Counter(
            "frwatch_archive_bytes_total",
            "Bytes of message values written to complete archive files",
            registry=registry,
        )
        self.file_bytes = Counter(
            "frwatch_archive_file_bytes_total",
            "Bytes of complete archive files on disk (gzip)",
            registry=registry,
        )
        self.files = Counter(
            "frwatch_archive_files_total", "Archive files completed", registry=registry
        )
        self.removed = Counter(
            "frwatch_archive_files_removed_total",
            "Archive files removed: retention (by age), restart (complete but not committed)",
            ["reason"],
            registry=registry,
        )
        self.lag = Gauge(
            "frwatch_archive_lag_messages",
            "Messages of the assigned partitions not yet in a complete, committed file",
            registry=registry,
        )
        self.lag_seconds = Gauge(
            "frwatch_archive_lag_seconds",
            "Wall clock minus the Kafka timestamp of the oldest message read but not yet in"
            " a complete file (0 when there is none)",
            registry=registry,
        )
        self.commits = Counter(
            "frwatch_archive_commits_total",
            "Offset commits after complete files",
            registry=registry,
        )
        for reason in ("retention", "restart"):
            self.removed.labels(reason=reason)


@dataclass(slots=True)
class Totals:
    """What this run archived (the closing JSON line)."""

    records: int = 0
    bytes: int = 0
    file_bytes: int = 0
    files: int = 0
    removed_on_restart: int = 0
    removed_by_retention: int = 0
    seconds: float = 0.0

    def to_json(self) -> str:
        """One JSON line for stderr."""
        doc = {
            "records": self.records,
            "bytes": self.bytes,
            "file_bytes": self.file_bytes,
            "files": self.files,
            "removed_on_restart": self.removed_on_restart,
            "removed_by_retention": self.removed_by_retention,
            "seconds": round(self.seconds, 3),
            "records_per_second": round(self.records / self.seconds) if self.seconds else 0,
        }
        return orjson.dumps(doc).decode()


class Archiver:
    """The consumer loop around an ArchiveWriter."""

    def __init__(self, settings: Settings, config: ArchiveConfig, metrics: ArchiveMetrics) -> None:
        self.settings = settings
        self.config = config
        self.metrics = metrics
        self.writer = ArchiveWriter(config)
        self.totals = Totals()
        self.stopping = asyncio.Event()
        self.committed: dict[int, int] = {}  # partition -> offset committed (or read from)
        self.lag = 0
        self.consumer: AIOKafkaConsumer | None = None

    async def run(self) -> Totals:
        """Archive until SIGTERM/SIGINT; then complete the open files, commit and stop."""
        started = time.monotonic()
        self.writer.prepare()
        self._count_removed("restart", self.writer.remove_dead_temps(_alive))
        self._retention()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        consumer = self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=archive_group(self.settings),
            group_instance_id=archive_instance_id(self.settings, self.config),
            client_id="frwatch-archive",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 << 20,
            fetch_max_bytes=16 << 20,
            **client_kwargs(self.settings),
        )
        consumer.subscribe([self.config.topic], listener=_Listener(self))
        await consumer.start()
        log.info(
            "archiving topic %s into %s (group %s)",
            self.config.topic,
            self.config.root,
            archive_group(self.settings),
        )
        next_retention = time.monotonic() + RETENTION_EVERY_S
        next_status = time.monotonic() + STATUS_EVERY_S
        try:
            while not self.stopping.is_set():
                batches = await self._fetch(consumer)
                add = self.writer.add
                for tp, records in batches.items():
                    p = tp.partition
                    if p not in self.writer.started:
                        self.committed.setdefault(p, records[0].offset)
                    for r in records:
                        add(p, r.offset, r.timestamp, r.value)
                    self.metrics.read.inc(len(records))
                self.writer.flush()
                self.writer.complete_due()
                await self._commit()
                self._observe_lag(consumer)
                now = time.monotonic()
                if now >= next_retention:
                    next_retention = now + RETENTION_EVERY_S
                    self._retention()
                if now >= next_status:
                    next_status = now + STATUS_EVERY_S
                    log.info(
                        "%d records in %d files so far, lag %d messages",
                        self.totals.records,
                        self.totals.files,
                        self.lag,
                    )
            self.writer.complete_all()
            await self._commit()
        finally:
            with contextlib.suppress(KafkaError):
                await consumer.stop()
            self.totals.seconds = time.monotonic() - started
        return self.totals

    async def _fetch(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[Any]]:
        stop = asyncio.ensure_future(self.stopping.wait())
        fetch = asyncio.ensure_future(consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_RECORDS))
        await asyncio.wait({stop, fetch}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not fetch.done():
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetch
            return {}
        batches: dict[TopicPartition, list[Any]] = fetch.result()
        return batches

    async def _commit(self) -> None:
        """Commit what complete files cover; count them."""
        for done in self.writer.take_completed():
            self.totals.records += done.records
            self.totals.bytes += done.value_bytes
            self.totals.file_bytes += done.file_bytes
            self.totals.files += 1
            self.metrics.records.inc(done.records)
            self.metrics.bytes.inc(done.value_bytes)
            self.metrics.file_bytes.inc(done.file_bytes)
            self.metrics.files.inc()
        removed = self.writer.removed_on_restart
        if removed:
            self.writer.removed_on_restart = 0
            self._count_removed("restart", removed)
        offsets = self.writer.commits()
        if not offsets or self.consumer is None:
            return
        tps = {TopicPartition(self.config.topic, p): o for p, o in offsets.items()}
        try:
            await self.consumer.commit(tps)
        except CommitFailedError as exc:
            # a rebalance took the partitions: their next owner reads these files' messages
            # again and removes the files first (ArchiveWriter.begin_partition)
            log.warning("commit refused (%s): the partitions' next owner rewrites their files", exc)
            return
        except KafkaError as exc:
            # transient (a broker restart): try again with the next batch
            log.warning("commit failed (%s); retrying", exc)
            for p, o in offsets.items():
                self.writer.to_commit.setdefault(p, o)
            return
        self.metrics.commits.inc()
        self.committed.update(offsets)

    def _observe_lag(self, consumer: AIOKafkaConsumer) -> None:
        lag = 0
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            base = self.committed.get(tp.partition)
            if high is not None and base is not None:
                lag += max(0, high - base)
        self.lag = lag
        self.metrics.lag.set(lag)
        oldest = min((f.first_ts_ms for f in self.writer.open.values()), default=None)
        self.metrics.lag_seconds.set(
            0.0 if oldest is None else max(0.0, time.time() - oldest / 1000)
        )

    def _retention(self) -> None:
        gone = self.writer.remove_expired(int(time.time() * 1000))
        if gone:
            log.info("retention: removed %d hour(s), the newest %s", len(gone), gone[-1].name)
            self.totals.removed_by_retention += len(gone)
            self._count_removed("retention", len(gone))

    def _count_removed(self, reason: str, n: int) -> None:
        if n:
            self.metrics.removed.labels(reason=reason).inc(n)
            if reason == "restart":
                self.totals.removed_on_restart += n

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Complete and commit the revoked partitions' files before they move."""
        parts = {tp.partition for tp in revoked if tp.topic == self.config.topic}
        self.writer.complete_all(parts)
        await self._commit()
        self.writer.revoked(parts)
        for p in parts:
            self.committed.pop(p, None)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, archiver: Archiver) -> None:
        self.archiver = archiver

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.archiver.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class MetricsAddressError(OSError):
    """The /metrics address cannot be served (in use, most often)."""


def serve_metrics(settings: Settings) -> ArchiveMetrics:
    """The archiver's /metrics on FRWATCH_WEB_BIND:FRWATCH_WEB_PORT."""
    disable_created_metrics()  # type: ignore[no-untyped-call]  # as the worker: no `_created`
    registry = CollectorRegistry()
    metrics = ArchiveMetrics(registry)
    try:
        start_http_server(settings.web_port, addr=settings.web_bind, registry=registry)
    except OSError as exc:
        raise MetricsAddressError(
            f"cannot serve /metrics on {settings.web_bind}:{settings.web_port}: "
            f"{exc.strerror or exc} (give the archiver its own --web-port)"
        ) from None
    return metrics


def run_archiver(settings: Settings, config: ArchiveConfig) -> Totals:
    """Serve metrics and archive until stopped; the closing summary line goes to stderr."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="frwatch archive: %(message)s"
    )
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    metrics = serve_metrics(settings)
    totals = asyncio.run(Archiver(settings, config, metrics).run())
    print(totals.to_json(), file=sys.stderr)
    return totals
