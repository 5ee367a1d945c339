"""`frwatch worker`: run the Faust application with its account feed and checked delivery."""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import faust
from faust.utils.terminal import SpinnerHandler
from mode.utils.logging import level_number

from streams.app.faust_app import build_app
from streams.app.memory import pin_mmap_threshold
from streams.app.routing import MAX_FORWARD_MESSAGE_BYTES
from streams.core.rules import RulesError, builtin_rules_bytes, parse_rules
from streams.kafkaio import (
    KafkaAccessError,
    check_group,
    check_login,
    check_topics,
    max_message_bytes,
)
from streams.settings import Settings
from topics.catalog import detect_topic_name
from topics.formats import FormatError, describe_problem, load_format

# fetch responses (up to FETCH_BYTES per partition) are mmapped and given back when freed;
# socket reads (256 KiB) and messages stay on the heap, reused without a system call
MMAP_THRESHOLD = 1 << 20
# below this a detect topic is misconfigured: forwards are not shrunk to fit, its refusal
# stops the worker with the topic named
MIN_FORWARD_MESSAGE_BYTES = 16 * 1024


class FrwatchWorker(faust.Worker):
    """Faust's worker, with the root logger back at `loglevel` once startup is over.

    Faust's startup spinner sets the root logger to DEBUG so that every record turns it.
    Left so, every `log.debug` in Faust and aiokafka (several per produced or fetched
    message) builds a LogRecord and walks the handlers only for the spinner to drop it:
    a few percent of the worker's main thread. The spinner is finished by then.
    """

    #: SIGHUP: read the rules file again (set by run_worker)
    reload_rules: Any = None

    def install_signal_handlers(self) -> None:
        """mode's handlers, and SIGHUP (whose default would end the worker) for the rules."""
        super().install_signal_handlers()
        if self.reload_rules is not None:
            self.loop.add_signal_handler(signal.SIGHUP, self.reload_rules)

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        quiet_root_logger(self.loglevel)
        # `kill -USR1 <pid>`: where every task of the worker waits, in its log
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGUSR1, lambda: log_task_stacks(self.app.agents.human_tracebacks())
        )


def log_task_stacks(agents: str = "") -> None:
    """Log where every asyncio task of the worker waits, awaited coroutines included."""
    out = io.StringIO(agents)
    out.seek(0, io.SEEK_END)
    for task in asyncio.all_tasks():
        out.write(f"--- {task.get_name()}\n")
        coro: Any = task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
            frame = frame or getattr(coro, "gi_frame", None)
            if frame is not None:
                out.write(
                    f"    {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}\n"
                )
            coro = (
                getattr(coro, "cr_await", None)
                or getattr(coro, "ag_await", None)
                or getattr(coro, "gi_yieldfrom", None)
            )
    logging.getLogger(__name__).warning("task stacks (SIGUSR1):\n%s", out.getvalue())


def quiet_root_logger(loglevel: str | int | None) -> None:
    """Drop the spinner's handler and put the root logger back at `loglevel`."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, SpinnerHandler):
            root.removeHandler(handler)
    root.setLevel(level_number(loglevel) or logging.WARNING)


def run_worker(settings: Settings, loglevel: str) -> int:
    """Start the worker in the foreground; returns when it stops."""
    try:
        # FRWATCH_RULES=kafka:: the built-in catalog until the rules topic says otherwise
        path = None if settings.rules_from_kafka else settings.rules
        data = builtin_rules_bytes() if path is None else Path(path).read_bytes()
        rules = parse_rules(data, path or "builtin:catalog.yaml")
    except OSError as exc:
        print(f"frwatch worker: error: {path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except RulesError as exc:
        for problem in exc.problems:
            print(f"frwatch worker: error: {problem}", file=sys.stderr)
        return 2
    try:
        input_format = load_format(settings.input_format)
    except FormatError as exc:
        print(f"frwatch worker: error: {describe_problem(exc)}", file=sys.stderr)
        return 2
    topics = settings.topics()
    needed = [topics[role] for role in ("requests", "accounts", "alerts", "dlq", "exceptions")]
    if settings.rules_from_kafka:
        needed.append(settings.topic_rules)
    try:
        # a refused login is retried forever by Faust's consumer: check it once, up front
        asyncio.run(check_login(settings))
        asyncio.run(check_topics(settings, needed))
        asyncio.run(check_group(settings, settings.app_id))
        # forwards stay below what the detect topic takes (the broker's default if it is new)
        limit = asyncio.run(max_message_bytes(settings, detect_topic_name(settings.app_id)))
    except KafkaAccessError as exc:
        print(f"frwatch worker: error: {exc}", file=sys.stderr)
        return 2
    pin_mmap_threshold(MMAP_THRESHOLD)  # before the first fetch buffer
    fw = build_app(settings, rules, forward_limit(limit), data, input_format)
    # the feeds and the delivery start before the app, so accounts (and rules) are caught up
    # before any request is processed; they stop after it (mode stops services in reverse)
    worker = FrwatchWorker(fw.app, *fw.services(), loglevel=loglevel, quiet=True)
    if settings.rules_from_kafka:
        worker.reload_rules = lambda: logging.getLogger(__name__).warning(
            "SIGHUP ignored: the rules follow the rules topic (frwatch rules deploy)"
        )
    else:
        worker.reload_rules = lambda: fw.rules.reload_file(settings.rules)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code
    else:  # pragma: no cover - execute_from_commandline always raises
        code = 0
    if fw.refused:  # Kafka refused a write for good: logged, counted, nothing committed past it
        return 1
    return code if isinstance(code, int) else 0


def forward_limit(max_message_bytes: int | None) -> int:
    """Forward size bound for a detect topic that takes `max_message_bytes` (None: unknown)."""
    if max_message_bytes is None:
        return MAX_FORWARD_MESSAGE_BYTES
    return max(MIN_FORWARD_MESSAGE_BYTES, min(MAX_FORWARD_MESSAGE_BYTES, max_message_bytes))
