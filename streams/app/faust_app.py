"""The Faust application: topics, the window table, and the three agents.

api.requests --ingest--> <app>-detect (batched per partition) --detect--> frwatch.alerts
      |                        ^ enrichment from AccountFeed           \\-> <app>-windows table
      \\--> frwatch.dlq                                                  (changelogged)
api.accounts --account-audit--> frwatch.dlq (rejected records only)
frwatch.rules --RulesFeed (FRWATCH_RULES=kafka:), or SIGHUP--> RulesInForce -> every stage

Every write goes through one checked `Delivery` (streams/app/delivery.py): an input message
is acked (and so may be committed) only once Kafka acknowledged everything it caused, in
input order (streams/app/tickets.py); a write Kafka refuses for good stops the worker
(exit 1) with nothing committed past it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from streams import __version__
from streams.app.account_feed import AccountFeed
from streams.app.codecs import RawBytes
from streams.app.delivery import Delivery, delivery_failures_counter
from streams.app.detection import DetectStage
from streams.app.exception_feed import ExceptionFeed, ExceptionMetrics
from streams.app.fastpath import FrwatchApp
from streams.app.in_order import SettlerStopped, ingest_in_order
from streams.app.metrics import FAUST_PREFIX, DetectorMetrics
from streams.app.routing import MAX_FORWARD_MESSAGE_BYTES, Routed, Router, Screened
from streams.app.rules_in_force import RulesFeed, RulesInForce, rules_snapshot
from streams.app.screening import ScreeningPool, ScreeningUnavailable
from streams.app.sensors import install_metrics_endpoint
from streams.app.tickets import InputAcker, Ticket
from streams.core.exceptions import ExceptionsInForce
from streams.core.rules import RuleSet
from streams.kafkaio import client_kwargs, faust_kwargs
from streams.settings import Settings
from topics.accounts import AccountDirectory, decode_account_message
from topics.alerts import Alert
from topics.catalog import detect_topic_name, windows_table_name
from topics.dlq import INTERNAL_ERROR, DeadLetter, Rejection, raw_text
from topics.exceptions import decode_exception_message
from topics.formats import InputFormat
from topics.stage2 import watermark_message

log = logging.getLogger(__name__)

FETCH_BYTES = 4 << 20  # per partition and fetch
# messages at least this long are screened in a screening process; shorter ones (single
# events, small batches) cost less to screen here than to send there and back
SCREEN_ELSEWHERE_BYTES = 4096
# bytes of messages screened or being screened elsewhere and not yet routed, per screening
# process: enough queued work for the process to go on while the worker's threads hold the
# GIL for milliseconds (3M records in batches of 100, records/s: 8 messages 272-373k, 32
# messages 378-379k, 1 MiB 394-401k, 2 MiB 409-417k, 4 MiB 451k; docs/performance.md, 10)
IN_FLIGHT_BYTES_PER_PROCESS = 4 << 20
# how often every ingest tells every detect partition how far its input partitions have
# come in event time (SPEC 4.1: the retention clock is their low watermark)
WATERMARK_INTERVAL_S = 1.0
# input messages routed whose writes Kafka has not acknowledged yet: ingest waits below this
# (each holds its message, up to a 25 KB batch: a few MB in all)
INPUTS_IN_FLIGHT = 1000


@dataclass
class Frwatch:
    """A built (not started) frwatch application and the services the worker runs beside it."""

    app: faust.App
    feed: AccountFeed
    delivery: Delivery
    metrics: DetectorMetrics
    registry: CollectorRegistry
    rules: RulesInForce
    #: the rules topic's feed when the worker follows it (`FRWATCH_RULES=kafka:`)
    rules_feed: RulesFeed | None = None
    #: the exceptions topic's feed (SPEC 4.4): the detect agent waits until it is caught up
    exceptions_feed: ExceptionFeed | None = None

    def services(self) -> list[Any]:
        """What starts before the app (caught up before any request) and stops after it."""
        feeds: list[Any] = [self.feed] if self.rules_feed is None else [self.rules_feed, self.feed]
        if self.exceptions_feed is not None:
            feeds.append(self.exceptions_feed)
        return [*feeds, self.delivery]

    @property
    def refused(self) -> bool:
        """Kafka refused a write for good: the worker stopped for it (exit 1)."""
        return self.delivery.refusal is not None


def now_ms() -> int:
    """Wall clock in epoch ms (the shell's clock; the core has none)."""
    return int(time.time() * 1000)


async def wait_for_shutdown() -> None:
    """Take nothing more: the worker is stopping, and its shutdown cancels this."""
    await asyncio.Event().wait()


def build_app(
    settings: Settings,
    rules: RuleSet,
    forward_limit_bytes: int = MAX_FORWARD_MESSAGE_BYTES,
    rules_data: bytes | None = None,
    input_format: InputFormat | None = None,
) -> Frwatch:
    """Wire the application; nothing connects until a Worker starts it.

    `forward_limit_bytes`: the detect topic's `max.message.bytes` (or less), read from the
    broker by the worker: forwards are split below it. `rules_data`: the bytes `rules` was
    parsed from (kept so that a change can be compared with it). `input_format`: the format
    `settings.input_format` names, loaded (None: frwatch's own); screening processes load
    the same one and say so in their hello.
    """
    app = FrwatchApp(
        settings.app_id,
        broker=settings.faust_broker,
        store=settings.store,
        # rocksdb:// tables live here: one directory per worker (docs/operations.md)
        datadir=str(settings.data_path),
        # static membership: a killed worker started again takes its partitions back at
        # once instead of after the old member's session timeout (a clean stop still leaves
        # the group: streams/app/fastpath.py)
        consumer_group_instance_id=settings.group_instance_id,
        topic_partitions=settings.partitions,
        web_bind=settings.web_bind,
        web_port=settings.web_port,
        web_host=settings.web_bind,
        web_tables_enabled=False,  # table contents hold customer ids
        web_router_enabled=False,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        autodiscover=False,
        # the window table's changelog: JSON keys and values (small dicts, string keys)
        key_serializer="json",
        value_serializer="json",
        table_cleanup_interval=3600.0,
        # 4 MiB fetches: fewer round trips to Faust's consumer thread (single events: 11k/s
        # with the 1 MiB default, 22k/s with 2 MiB, 24-25k/s with 4 MiB; batches of 100:
        # 0.24-0.26 -> 0.26-0.31 of the raw consume rate); RSS stays flat because the worker pins
        # glibc's mmap threshold (streams/app/memory.py). A short stream buffer: it counts
        # messages, and a batch message is ~25 KB, so Faust's 4096 made RSS grow with batched
        # input; 128 messages cost no throughput (docs/performance.md)
        consumer_max_fetch_size=FETCH_BYTES,
        stream_buffer_maxsize=128,
        **faust_kwargs(settings),
    )
    registry = CollectorRegistry()
    install_metrics_endpoint(app, registry, FAUST_PREFIX)
    metrics = DetectorMetrics(
        registry, [r.id for r in rules.rules], {r.id: r.severity for r in rules.rules}
    )
    directory = AccountDirectory()
    feed = AccountFeed(
        settings.bootstrap_servers,
        settings.topic_accounts,
        directory,
        on_change=metrics.accounts_loaded.set,
        client=client_kwargs(settings),
    )

    def stop_on_refusal(topic: str, exc: BaseException) -> None:
        # Delivery has logged the refusal and counted it; Faust would go on with later
        # messages, so the worker stops (exit 1), committing nothing past the undelivered
        os.kill(os.getpid(), signal.SIGTERM)

    failures = delivery_failures_counter(registry)
    detect_name = detect_topic_name(settings.app_id)
    for topic in (settings.topic_alerts, settings.topic_dlq, detect_name):
        failures.labels(topic=topic)  # a series at 0 from the start, for rates and dashboards
    delivery = Delivery(
        settings.bootstrap_servers,
        on_fatal=stop_on_refusal,
        failures=failures,
        producer_config=client_kwargs(settings),
    )

    # bytes in, bytes out: frwatch decodes with orjson itself
    raw: dict[str, Any] = {"schema": RawBytes(key_serializer="raw", value_serializer="raw")}
    requests_topic = app.topic(settings.topic_requests, **raw)
    accounts_topic = app.topic(settings.topic_accounts, **raw)
    detect_topic = app.topic(detect_name, internal=True, partitions=settings.partitions, **raw)
    windows = app.Table(windows_table_name(), default=None, partitions=settings.partitions)

    router = Router(
        rules,
        directory,
        settings.partitions,
        forward_limit_bytes,
        input_format,
        check_future=not settings.replay_mode,
    )
    exceptions = ExceptionsInForce()
    exceptions_feed = ExceptionFeed(
        settings.bootstrap_servers,
        settings.topic_exceptions,
        exceptions,
        client=client_kwargs(settings),
    )
    ExceptionMetrics(registry, exceptions)
    exceptions_topic = app.topic(settings.topic_exceptions, **raw)
    stage = DetectStage(rules, windows, settings.partitions, exceptions)
    metrics.watch_window_states(stage.store.entries_by_rule)
    in_force = RulesInForce(rules, rules_data or b"")
    metrics.set_rules(
        [r.id for r in rules.rules], {r.id: r.severity for r in rules.rules}, rules.sha256
    )
    metrics.watch_rules_changes(lambda: dict(in_force.changes))

    def switch_rules(new: RuleSet, data: bytes) -> None:
        # between two messages: both stages and the metrics at once (the screening
        # processes follow in the background; what they screened before is screened again)
        router.set_rules(new)
        stage.set_rules(new)
        metrics.set_rules(
            [r.id for r in new.rules], {r.id: r.severity for r in new.rules}, new.sha256
        )
        screeners.follow(new, data)

    in_force.listen(switch_rules)
    rules_feed = None
    if settings.rules_from_kafka:
        rules_feed = RulesFeed(
            settings.bootstrap_servers,
            settings.topic_rules,
            in_force,
            client=client_kwargs(settings),
        )
    screeners = ScreeningSwitch(settings, rules, input_format)
    # input partition -> [highest event time of a valid record read, wall ms of the last read]
    progress: dict[int, list[int]] = {}
    metrics.watch_retention_clock(lambda: min(stage.clocks.values(), default=0), now_ms)

    def send_dead_letters(key: bytes | None, letters: list[DeadLetter]) -> list[Any]:
        return [delivery.send(settings.topic_dlq, dl.to_json(), key) for dl in letters]

    async def delivered(futures: list[Any]) -> None:
        """Wait until Kafka acknowledged them all; a refusal stops the worker: wait for it."""
        try:
            await asyncio.gather(*futures)
        except Exception:  # delivery stopped (it logged why): never go on past this
            await wait_for_shutdown()

    def internal_error(msg: Any, exc: Exception) -> list[Any]:
        log.exception("internal error on %s[%s]@%s", msg.topic, msg.partition, msg.offset)
        metrics.count_results({"error": 1})
        letter = DeadLetter(
            Rejection(INTERNAL_ERROR, None, f"{type(exc).__name__}: {exc}"),
            raw_text(msg.value),
            msg.topic,
            msg.partition,
            msg.offset,
        )
        return send_dead_letters(msg.key, [letter])

    def release_input(msg: Any) -> None:
        # the ticket's reference was the last: the message may be committed
        if msg.ack(app.consumer):
            app.sensors.on_message_out(msg.tp, msg.offset, msg)

    # inputs reported in the order they were routed, each once its writes are acknowledged
    acker: InputAcker[Any] = InputAcker(release_input)

    def deliver(routed: Routed, msg: Any, ticket: Ticket[Any]) -> None:
        for partition, value in routed.forward_messages:
            ticket.add(delivery.send(detect_name, value, partition=partition))
        for fut in send_dead_letters(msg.key, routed.dead_letters):
            ticket.add(fut)

    async def ingest_one(msg: Any, screening: asyncio.Future[Screened] | None, at_ms: int) -> None:
        """Route one message (screened elsewhere, or here) and deliver what it turned into.

        The message is held (one more reference) until Kafka acknowledged its forwards and
        dead letters, after those of every message routed before it.
        """
        # held first: Faust acks the current event of an agent cancelled at shutdown, and its
        # commit takes the first run of acked offsets even past an unacked one before it
        msg.incref()
        if acker.failed:
            await wait_for_shutdown()  # never released: processed again after the restart
        kafka_ts_ms = int(msg.timestamp * 1000)
        ticket = acker.open(msg)
        try:
            if screening is None:
                routed = router.route(
                    msg.value, msg.topic, msg.partition, msg.offset, kafka_ts_ms, at_ms
                )
            else:
                try:
                    screened = await screening
                except ScreeningUnavailable:
                    screened = router.screen.screen(msg.value, at_ms)
                if screened.rules_sha256 != router.screen.rules_sha256:
                    # screened under the rules before a change: again, under those in force
                    screened = router.screen.screen(msg.value, at_ms)
                routed = router.route_screened(
                    screened, msg.value, msg.topic, msg.partition, msg.offset, kafka_ts_ms, at_ms
                )
            deliver(routed, msg, ticket)
        except Exception as exc:
            for fut in internal_error(msg, exc):
                ticket.add(fut)
            mark_read(msg.partition, [], at_ms)
        else:
            # after the forwards were handed to the delivery: a watermark record sent later
            # goes after them, to each detect partition
            mark_read(msg.partition, routed.event_ts_ms, at_ms)
            metrics.count_routed(routed)
        finally:
            ticket.close()
        await acker.wait_below(INPUTS_IN_FLIGHT)

    def mark_read(partition: int, event_ts_ms: list[int], at_ms: int) -> None:
        mark = progress.get(partition)
        if mark is None:
            mark = progress[partition] = [-1, at_ms]
        if event_ts_ms:
            mark[0] = max(mark[0], max(event_ts_ms))
        mark[1] = at_ms

    @app.timer(WATERMARK_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def broadcast_watermarks() -> None:
        consumer = app.consumer
        assigned = sorted(
            tp.partition for tp in consumer.assignment() if tp.topic == settings.topic_requests
        )
        inputs = consumer.topic_partitions(settings.topic_requests)
        if not assigned or not inputs:
            return
        now = now_ms()
        marks = []
        for p in assigned:
            mark = progress.get(p)
            if mark is None:  # assigned, nothing read yet: idle only after idle_after
                mark = progress[p] = [-1, now]
            marks.append((p, mark[0], now - mark[1] >= settings.idle_after_ms))
        value = watermark_message(inputs, marks)
        for dest in range(settings.partitions):
            # not awaited: a refusal stops the worker through the delivery itself
            delivery.send(detect_name, value, partition=dest).add_done_callback(_observed)

    async def track_assignment(app: Any, assigned: Any, *args: Any, **kwargs: Any) -> None:
        # a partition (re)assigned starts its idle time afresh: its backlog is read soon
        now = now_ms()
        for tp in assigned:
            if tp.topic == settings.topic_requests:
                mark = progress.setdefault(tp.partition, [-1, now])
                mark[1] = now

    @app.agent(requests_topic, name="ingest")
    async def ingest(stream: Any) -> None:
        await feed.ready.wait()
        if rules_feed is not None:
            await rules_feed.ready.wait()
        pool = await screeners.start(in_force.rules, in_force.data)
        if pool is None:
            async for event in stream.events():
                await ingest_one(event.message, None, now_ms())
            return
        sensors = app.sensors

        def settler_stopped(exc: BaseException) -> None:
            # Faust would restart the agent, and acks of later messages could let a commit
            # pass the ones in flight (faust-streaming #606): the worker stops instead, and
            # they are processed again after its restart
            log.critical("ingest stopped with messages in flight; stopping the worker: %r", exc)
            os.kill(os.getpid(), signal.SIGTERM)

        try:
            await ingest_in_order(
                stream.events(),
                screeners.submit,
                ingest_one,
                lambda msg: sensors.on_message_out(msg.tp, msg.offset, msg),
                settler_stopped,
                now_ms,
                IN_FLIGHT_BYTES_PER_PROCESS * len(pool.members),
                SCREEN_ELSEWHERE_BYTES,
            )
        except SettlerStopped:
            await asyncio.Event().wait()  # take nothing more until the shutdown cancels this
        finally:
            await screeners.stop()

    async def send_revisions(revisions: list[Alert]) -> None:
        """Alert revisions to the alerts topic (keyed by alert_id), acknowledged by Kafka."""
        if not revisions:
            return
        detected_at = now_ms()
        await delivered(
            [
                delivery.send(
                    settings.topic_alerts,
                    a.to_json(settings.mode, detected_at, __version__),
                    a.alert_id.encode(),
                )
                for a in revisions
            ]
        )
        metrics.count_revisions(a.status for a in revisions)

    async def sweep(msg: Any) -> None:
        """What the partition's clock made due: `closed` revisions acknowledged, then the
        states that record them written, then expired and retired states dropped.

        The drops write tombstones to the changelog partition of the current message: only
        keys of that partition are dropped here.
        """
        try:
            swept = stage.sweep(msg.partition)
            await send_revisions(swept.revisions)
            stage.store.flush()
        except Exception as exc:
            stage.store.pending.clear()
            await delivered(internal_error(msg, exc))
            return
        for key in swept.drops:
            stage.store.drop(key)

    async def detect_one(msg: Any) -> None:
        """Watermark or forwards: windows counted, revisions acknowledged, then state written."""
        if stage.is_watermark(msg.value):
            try:
                stage.report(msg.partition, msg.value)
            except Exception as exc:
                await delivered(internal_error(msg, exc))
                return
            await sweep(msg)
            return
        try:
            out = stage.observe(msg.value, msg.topic, msg.partition, msg.offset)
            if out.alerts or out.updates:
                await send_revisions([a for a, _ in out.alerts] + out.updates)
                acked_at = time.time()
                for a, kafka_ts_ms in out.alerts:
                    metrics.count_alert(a.rule_id, max(0.0, acked_at - kafka_ts_ms / 1000))
            # only now, with every revision acknowledged, may windows reach the changelog
            stage.store.flush()
            await delivered(send_dead_letters(None, out.dead_letters))
        except Exception as exc:
            stage.store.pending.clear()
            await delivered(internal_error(msg, exc))
            return
        metrics.count_detected(out)
        await sweep(msg)

    @app.agent(detect_topic, name="detect")
    async def detect(stream: Any) -> None:
        if rules_feed is not None:
            await rules_feed.ready.wait()
        await exceptions_feed.ready.wait()  # exceptions apply from the first event (SPEC 4.4)
        async for event in stream.events():
            msg = event.message
            # held until what it caused is acknowledged: Faust acks the current event when
            # its agent is cancelled, so a stop while a write waits would commit it
            msg.incref()
            await detect_one(msg)
            release_input(msg)

    async def reindex_windows(app: Any, assigned: Any, *args: Any, **kwargs: Any) -> None:
        stage.forget_partitions()
        await track_assignment(app, assigned)

    app.on_partitions_assigned.connect(reindex_windows)  # type: ignore[arg-type]

    @app.agent(accounts_topic, name="account-audit")
    async def account_audit(stream: Any) -> None:
        # every worker's feed applies valid records; this agent (one consumer per partition in
        # the group) dead-letters rejected ones exactly once per cluster
        async for event in stream.events():
            msg = event.message
            verdict = decode_account_message(msg.key, msg.value)
            if isinstance(verdict, Rejection):
                letter = DeadLetter(
                    verdict, raw_text(msg.value), msg.topic, msg.partition, msg.offset
                )
                msg.incref()  # as in detect: committed only once the letter is acknowledged
                await delivered(send_dead_letters(msg.key, [letter]))
                release_input(msg)

    @app.agent(exceptions_topic, name="exception-audit")
    async def exception_audit(stream: Any) -> None:
        # as account-audit: every worker's feed skips a rejected exception, this agent
        # dead-letters it once per cluster (SPEC 4.4)
        async for event in stream.events():
            msg = event.message
            verdict = decode_exception_message(msg.key, msg.value)
            if isinstance(verdict, Rejection):
                letter = DeadLetter(
                    verdict, raw_text(msg.value), msg.topic, msg.partition, msg.offset
                )
                msg.incref()  # committed only once the letter is acknowledged
                await delivered(send_dead_letters(msg.key, [letter]))
                release_input(msg)

    return Frwatch(app, feed, delivery, metrics, registry, in_force, rules_feed, exceptions_feed)


class ScreeningSwitch:
    """The worker's screening processes, started again with each new rules version.

    Messages go to the current pool; after a rules change a new pool is started with the new
    version in the background and takes over once it said hello; until then the old one
    screens on, and what it screened is screened again in the worker (`Screened.rules_sha256`).
    """

    def __init__(
        self, settings: Settings, rules: RuleSet, input_format: InputFormat | None = None
    ) -> None:
        self.settings = settings
        self.input_format = input_format
        self.pool: ScreeningPool | None = None
        self.sha256 = rules.sha256
        self._lock = asyncio.Lock()
        self._stopped = False
        self._tasks: set[asyncio.Task[None]] = set()

    def _new_pool(self, rules: RuleSet, data: bytes) -> ScreeningPool:
        if data:
            # the version in force as bytes: the file may change again, the topic is no file
            path: str | None = str(rules_snapshot(self.settings.data_path / "rules", rules, data))
        else:
            path = None if self.settings.rules_from_kafka else self.settings.rules
        fmt = self.input_format
        return ScreeningPool(
            self.settings.screening_processes,
            path,
            rules.sha256,
            input_format=None if fmt is None else fmt.path,
            format_sha256="" if fmt is None else fmt.sha256,
            mode=self.settings.mode,
        )

    async def start(self, rules: RuleSet, data: bytes) -> ScreeningPool | None:
        """Start the first pool (None: no screening processes, the worker screens itself)."""
        if not self.settings.screening_processes:
            return None
        async with self._lock:
            self.sha256 = rules.sha256
            pool = self._new_pool(rules, data)
            try:
                await pool.start()
            except ScreeningUnavailable as exc:
                log.error("%s; the worker screens input in its own process", exc)
                return None
            self.pool = pool
            return pool

    def submit(self, value: bytes | None, now_ms: int) -> asyncio.Future[Screened]:
        """Screen one message in the current pool."""
        if self.pool is None:
            raise ScreeningUnavailable("no screening process is running")
        return self.pool.submit(value, now_ms)

    def follow(self, rules: RuleSet, data: bytes) -> None:
        """A new rules version is in force: start a pool for it in the background."""
        self.sha256 = rules.sha256
        if self.pool is None or self._stopped:
            return
        task = asyncio.ensure_future(self._switch(rules, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _switch(self, rules: RuleSet, data: bytes) -> None:
        async with self._lock:
            if rules.sha256 != self.sha256 or self._stopped or self.pool is None:
                return  # replaced by a later version meanwhile, or stopping
            pool = self._new_pool(rules, data)
            try:
                await pool.start()
            except ScreeningUnavailable as exc:
                log.error("%s; the old screening processes go on, the worker re-screens", exc)
                return
            old, self.pool = self.pool, pool
            log.info("screening processes switched to rules sha256 %s", rules.sha256)
        await old.stop()  # its unanswered messages are screened in the worker

    async def stop(self) -> None:
        """Stop the pool (and any being started)."""
        self._stopped = True
        for task in list(self._tasks):
            task.cancel()
        async with self._lock:
            if self.pool is not None:
                await self.pool.stop()
                self.pool = None


def _observed(fut: asyncio.Future[Any]) -> None:
    """A done callback that reads the outcome (a refusal is handled by the delivery)."""
    if not fut.cancelled():
        fut.exception()
