"""`frwatch exceptions add | list | remove` on the compacted exceptions topic (SPEC 4.4)."""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError, KafkaError
from prometheus_client.parser import text_string_to_metric_families

from streams.cli.ops import _fail, _refusal, _run_checked, _send_all
from streams.core.windows import parse_duration_ms
from streams.kafkaio import KafkaAccessError, assign_from_beginning, client_kwargs
from streams.settings import Settings
from topics.exceptions import (
    ExceptionError,
    ExceptionRecord,
    ExceptionTombstone,
    decode_exception_message,
    parse_exception,
)
from topics.timestamps import TimestampError, format_ms, parse_rfc3339_ms

HITS_METRIC = "frwatch_exception_hits_total"
SCRAPE_TIMEOUT_S = 3.0


def new_exception_id() -> str:
    """A fresh id: EX- and 12 hex digits (random; ids need only be unique)."""
    return f"EX-{uuid.uuid4().hex[:12]}"


def expiry_ms(text: str, now_ms: int) -> int:
    """`--expires`: a duration from now (90d, 12h) or an RFC 3339 time; ValueError otherwise."""
    try:
        return now_ms + parse_duration_ms(text)
    except ValueError:
        pass
    try:
        return parse_rfc3339_ms(text)
    except TimestampError:
        raise ValueError(
            f"--expires {text!r} is neither a duration (30d, 12h) nor an RFC 3339 time"
        ) from None


def match_of(args: argparse.Namespace) -> Any:
    """The condition that --account, --org, --api-key or --match stands for."""
    if args.account is not None:
        return {"field": "account_id", "equals": args.account}
    if args.org is not None:
        return {"field": "account.org_id", "equals": args.org}
    if args.api_key is not None:
        return {"field": "api_key_id", "equals": args.api_key}
    try:
        return orjson.loads(args.match)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"--match is not JSON: {exc}") from None


def new_exception(args: argparse.Namespace, now_ms: int) -> ExceptionRecord:
    """The record `exceptions add` publishes (ValueError / ExceptionError when invalid)."""
    rules = [r.strip() for r in args.rules.split(",")]
    record = {
        "exception_id": new_exception_id(),
        "rules": rules,
        "match": match_of(args),
        "reason": args.reason,
        "owner": args.owner,
        "ticket": args.ticket,
        "created_at": format_ms(now_ms),
        "expires_at": format_ms(expiry_ms(args.expires, now_ms)),
    }
    return parse_exception(record)


async def read_exceptions(
    settings: Settings, timeout: float = 30.0
) -> tuple[dict[str, ExceptionRecord], int]:
    """The topic read whole: the exceptions it holds now, and how many records are invalid."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="frwatch-exceptions",
        **client_kwargs(settings),
    )
    await consumer.start()
    found: dict[str, ExceptionRecord] = {}
    invalid = 0
    try:
        ends = await assign_from_beginning(consumer, settings.topic_exceptions, timeout)
        deadline = time.monotonic() + timeout
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading topic {settings.topic_exceptions} timed out")
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for rec in records:
                    got = decode_exception_message(rec.key, rec.value)
                    if isinstance(got, ExceptionRecord):
                        found[got.exception_id] = got
                    elif isinstance(got, ExceptionTombstone):
                        found.pop(got.exception_id, None)
                    else:
                        invalid += 1  # dead-lettered by the workers, never applied
    finally:
        await consumer.stop()
    return found, invalid


def metrics_url(settings: Settings) -> str:
    """The worker's /metrics (a wildcard bind address is reached on this host)."""
    host = settings.web_bind
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.web_port}/metrics"


def scrape_hits(url: str) -> tuple[dict[str, float] | None, str | None]:
    """The worker's hits per exception id, or None and why they are unknown."""
    try:
        with urllib.request.urlopen(
            f"{url}?name[]={HITS_METRIC}", timeout=SCRAPE_TIMEOUT_S
        ) as resp:
            text = resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return None, f"{url} answered HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return None, f"no worker metrics at {url} ({reason})"
    if "frwatch_exception_hits" not in text:  # a worker serves the family, hits or not
        return None, f"{url} is not the metrics of a frwatch worker that applies exceptions"
    hits: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == HITS_METRIC:
                    key = sample.labels.get("exception_id", "")
                    hits[key] = hits.get(key, 0.0) + sample.value
    except ValueError as exc:
        return None, f"{url} served unreadable metrics ({exc})"
    return hits, None


def listing(
    found: dict[str, ExceptionRecord],
    now_ms: int,
    hits: dict[str, float] | None,
    why_unknown: str | None,
) -> list[dict[str, Any]]:
    """One entry per exception: the record, its state now, and its hits (or why unknown)."""
    out = []
    for x in sorted(found.values(), key=lambda x: (x.expires_at_ms, x.exception_id)):
        state = (
            "active"
            if x.in_force_at(now_ms)
            else "expired"
            if now_ms >= x.expires_at_ms
            else "pending"
        )
        entry = {**x.to_wire(), "state": state}
        if hits is None:
            entry["hits"] = None
            entry["hits_unknown"] = why_unknown
        else:
            entry["hits"] = int(hits.get(x.exception_id, 0))
        out.append(entry)
    return out


def _line(e: dict[str, Any]) -> str:
    hits = "?" if e["hits"] is None else str(e["hits"])
    ticket = f" ticket={e['ticket']}" if e["ticket"] else ""
    return (
        f"{e['exception_id']} {e['state']:7} hits={hits} rules={','.join(e['rules'])} "
        f"until={e['expires_at']} owner={e['owner']}{ticket} match={orjson.dumps(e['match']).decode()}"
        f" :: {e['reason']}"
    )


def _kafka_errors(cmd: str, settings: Settings, exc: BaseException, operation: str) -> int:
    if isinstance(exc, KafkaConnectionError):
        return _fail(cmd, f"cannot reach broker {settings.broker}: {exc}")
    return _refusal(cmd, exc, operation)


def _warn_unknown_rules(record: ExceptionRecord, settings: Settings) -> None:
    """A rule id that the local rules do not have is probably a typo: say so (not an error:
    the rules in force may change, and a worker may follow the rules topic)."""
    if record.rules == ("*",) or settings.rules_from_kafka:
        return
    from streams.core.rules import RulesError, load_rules

    try:
        rules = load_rules(settings.rules or None)
    except RulesError:
        return
    known = {r.id for r in rules.rules}
    for rule_id in record.rules:
        if rule_id not in known:
            print(
                f"frwatch exceptions add: warning: rule {rule_id} is not in {rules.path}",
                file=sys.stderr,
            )


def run_add(args: argparse.Namespace, settings: Settings) -> int:
    """`exceptions add`: validate, publish, print the record (its id first)."""
    cmd = "exceptions add"
    try:
        record = new_exception(args, int(time.time() * 1000))
    except (ExceptionError, ValueError) as exc:
        return _fail(cmd, f"{exc} (nothing published)")
    _warn_unknown_rules(record, settings)
    topic = settings.topic_exceptions
    message = (record.exception_id.encode(), record.to_json())
    try:
        _run_checked(settings, _send_all(settings, topic, iter([message])), (topic,))
    except (KafkaConnectionError, KafkaAccessError, KafkaError) as exc:
        return _kafka_errors(cmd, settings, exc, f"write topic {topic}")
    print(orjson.dumps({**record.to_wire(), "topic": topic}).decode())
    return 0


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    """`exceptions list [--json]`: each exception, active or expired, with its hits."""
    cmd = "exceptions list"
    topic = settings.topic_exceptions
    try:
        found, invalid = _run_checked(settings, read_exceptions(settings), (topic,))
    except (KafkaConnectionError, KafkaAccessError, KafkaError) as exc:
        return _kafka_errors(cmd, settings, exc, f"read topic {topic}")
    except TimeoutError as exc:
        return _fail(cmd, str(exc))
    url = metrics_url(settings)
    hits, why = scrape_hits(url)
    entries = listing(found, int(time.time() * 1000), hits, why)
    for e in entries:
        print(orjson.dumps(e).decode() if args.json else _line(e))
    if not args.json and hits is None:
        print(f"hits unknown: {why}", file=sys.stderr)
    elif not args.json:
        print(f"hits: since the start of the worker at {url}", file=sys.stderr)
    if invalid:
        print(f"{invalid} invalid record(s) on {topic} are not applied", file=sys.stderr)
    return 0


def run_remove(args: argparse.Namespace, settings: Settings) -> int:
    """`exceptions remove ID`: a tombstone for a known id; an unknown one exits 2."""
    cmd = "exceptions remove"
    topic = settings.topic_exceptions
    try:
        found, _ = _run_checked(settings, read_exceptions(settings), (topic,))
        if args.exception_id not in found:
            return _fail(cmd, f"unknown exception id {args.exception_id!r} on topic {topic}")
        tombstone = (args.exception_id.encode(), None)
        _run_checked(settings, _send_all(settings, topic, iter([tombstone])))
    except (KafkaConnectionError, KafkaAccessError, KafkaError) as exc:
        return _kafka_errors(cmd, settings, exc, f"use topic {topic}")
    except TimeoutError as exc:
        return _fail(cmd, str(exc))
    print(
        orjson.dumps({"exception_id": args.exception_id, "removed": True, "topic": topic}).decode()
    )
    return 0


def run_exceptions(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatch `frwatch exceptions ACTION`."""
    handlers = {"add": run_add, "list": run_list, "remove": run_remove}
    return handlers[args.exceptions_command](args, settings)
