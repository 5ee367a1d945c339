"""Operator commands: `topics create`, `accounts load`, `publish`, `alerts tail`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from streams.archive import ArchiveError, iter_lines
from streams.cli.alert_board import AlertBoard
from streams.cli.publish_lines import numbered_lines, outgoing
from streams.kafkaio import KafkaAccessError, check_login, check_topics, client_kwargs, refused
from streams.replay import open_all
from streams.settings import Settings
from topics.catalog import topic_catalog

EXIT_USAGE = 2
T = TypeVar("T")


def _fail(cmd: str, message: str) -> int:
    print(f"frwatch {cmd}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _run_checked(
    settings: Settings, work: Coroutine[Any, Any, T], topics: tuple[str, ...] = ()
) -> T:
    """Run `work` once the cluster has accepted this client's login (SPEC 6.1) and `topics`
    are known to exist (frwatch never creates a topic by using it)."""

    async def checked() -> T:
        # aiokafka's own warnings would say it again, less clearly, on more lines
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        try:
            await check_login(settings)
            if topics:
                await check_topics(settings, list(topics), hidden_too=False)
        except BaseException:
            work.close()
            raise
        return await work

    return asyncio.run(checked())


def _refusal(cmd: str, exc: BaseException, operation: str) -> int:
    """Exit 2 with one line for a refused login or ACL; other errors propagate."""
    if isinstance(exc, KafkaAccessError):
        return _fail(cmd, str(exc))
    message = refused(exc, operation)
    if message is None:
        raise exc
    return _fail(cmd, message)


async def create_topics(
    settings: Settings, requests_partitions: int | None = None
) -> list[tuple[str, str]]:
    """Create the catalog's topics; returns (name, "created" | "exists")."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id="frwatch-admin",
        **client_kwargs(settings),
    )
    try:
        await admin.start()
    except BaseException:
        await admin.close()
        raise
    try:
        existing = set(await admin.list_topics())
        out = []
        for spec in topic_catalog(
            settings.topics(), settings.app_id, settings.partitions, requests_partitions
        ):
            if spec.name in existing:
                out.append((spec.name, "exists"))
                continue
            try:
                await admin.create_topics(
                    [NewTopic(spec.name, spec.partitions, 1, topic_configs=spec.config)]
                )
                out.append((spec.name, "created"))
            except TopicAlreadyExistsError:
                out.append((spec.name, "exists"))
        return out
    finally:
        await admin.close()


async def delete_topics(settings: Settings) -> None:
    """Delete the catalog's topics and Faust's internal ones of the app id (its leader topic,
    changelogs); the benchmark cleans up after itself with this."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id="frwatch-admin",
        **client_kwargs(settings),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        names = [
            t.name
            for t in topic_catalog(settings.topics(), settings.app_id, settings.partitions)
            if t.name in existing
        ]
        names += sorted(
            t for t in existing if t.startswith(f"{settings.app_id}-") and t not in names
        )
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def run_topics(args: argparse.Namespace, settings: Settings) -> int:
    """`frwatch topics create`."""
    try:
        result = _run_checked(settings, create_topics(settings, args.requests_partitions))
    except KafkaConnectionError as exc:
        return _fail("topics create", f"cannot reach broker {settings.broker}: {exc}")
    except (KafkaAccessError, KafkaError) as exc:
        return _refusal("topics create", exc, "create topics")
    for name, state in result:
        print(orjson.dumps({"topic": name, "state": state}).decode())
    return 0


async def _producer(settings: Settings) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=1 << 20,
        max_request_size=8 << 20,
        client_id="frwatch-cli",
        **client_kwargs(settings),
    )
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    return producer


async def _send_all(
    settings: Settings, topic: str, messages: Iterator[tuple[bytes | None, bytes | None]]
) -> int:
    producer = await _producer(settings)
    sent = 0
    try:
        pending = []
        for key, value in messages:
            pending.append(await producer.send(topic, value=value, key=key))
            sent += 1
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


def _account_messages(path: str) -> Iterator[tuple[bytes | None, bytes | None]]:
    ((name, fh),) = open_all([path])
    for n, line in iter_lines(name, fh):
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        key = obj.get("account_id") if isinstance(obj, dict) else None
        if not isinstance(key, str) or not key:
            # the compacted topic refuses a message without a key (and with it, its batch)
            print(f"{path}:{n}: skipped: no account_id to key the record by", file=sys.stderr)
            continue
        # other invalid records are published: the worker dead-letters them with their reason
        yield key.encode(), line


def run_accounts(args: argparse.Namespace, settings: Settings) -> int:
    """`frwatch accounts load FILE`."""
    try:
        n = _run_checked(
            settings,
            _send_all(settings, settings.topic_accounts, _account_messages(args.file)),
            (settings.topic_accounts,),
        )
    except ArchiveError as exc:
        return _fail("accounts load", str(exc))
    except KafkaConnectionError as exc:
        return _fail("accounts load", f"cannot reach broker {settings.broker}: {exc}")
    except (KafkaAccessError, KafkaError) as exc:
        return _refusal("accounts load", exc, f"write topic {settings.topic_accounts}")
    print(orjson.dumps({"topic": settings.topic_accounts, "records": n}).decode(), file=sys.stderr)
    return 0


def run_rules_deploy(args: argparse.Namespace, settings: Settings) -> int:
    """`frwatch rules deploy FILE`: validate, then publish to the rules topic (SPEC 4.3)."""
    from streams.app.rules_in_force import RULES_KEY
    from streams.core.rules import RulesError, parse_rules

    try:
        with open(args.file, "rb") as fh:
            data = fh.read()
        rules = parse_rules(data, args.file)
    except OSError as exc:
        return _fail("rules deploy", f"{args.file}: cannot read: {exc.strerror or exc}")
    except RulesError as exc:
        for problem in exc.problems:  # every error found, one line each
            _fail("rules deploy", f"{problem} (nothing deployed)")
        return EXIT_USAGE
    try:
        _run_checked(
            settings,
            _send_all(settings, settings.topic_rules, iter([(RULES_KEY, data)])),
            (settings.topic_rules,),
        )
    except KafkaConnectionError as exc:
        return _fail("rules deploy", f"cannot reach broker {settings.broker}: {exc}")
    except (KafkaAccessError, KafkaError) as exc:
        return _refusal("rules deploy", exc, f"write topic {settings.topic_rules}")
    print(
        orjson.dumps(
            {
                "topic": settings.topic_rules,
                "file": args.file,
                "rules": len(rules.rules),
                "rules_sha256": rules.sha256,
            }
        ).decode()
    )
    return 0


def archive_messages(
    paths: list[str], batch: int | None
) -> Iterator[tuple[bytes | None, bytes | None]]:
    """Messages for `publish`: lines as they are, or K records per batch envelope."""
    for msg in outgoing(numbered_lines(paths), batch):
        yield msg.key, msg.value


def run_publish(args: argparse.Namespace, settings: Settings) -> int:
    """`frwatch publish [--batch K] [--topic T] [--from-line N] ARCHIVE...`."""
    from streams.cli.publish_cmd import publish_archives

    return publish_archives(args, settings)


async def _tail(
    settings: Settings,
    from_beginning: bool,
    as_json: bool,
    max_alerts: int | None,
    idle_exit: float | None,
    statuses: frozenset[str] | None = None,
) -> int:
    board = AlertBoard(sys.stdout, sys.stdout.isatty(), statuses)
    consumer = AIOKafkaConsumer(
        settings.topic_alerts,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        client_id="frwatch-tail",
        **client_kwargs(settings),
    )
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()
        raise
    seen = 0
    last = time.monotonic()
    try:
        while max_alerts is None or seen < max_alerts:
            batches = await consumer.getmany(timeout_ms=500)
            if not batches:
                if idle_exit is not None and time.monotonic() - last > idle_exit:
                    break
                continue
            last = time.monotonic()
            for records in batches.values():
                for rec in records:
                    if max_alerts is not None and seen >= max_alerts:
                        break
                    seen += 1
                    if rec.value is None:  # a tombstone on the compacted topic
                        if not as_json:
                            board.note(f"(deleted alert at offset {rec.offset})")
                        continue
                    try:
                        doc = orjson.loads(rec.value)
                        status = doc.get("status", "open")
                    except (orjson.JSONDecodeError, AttributeError, TypeError):
                        if not as_json:
                            board.note(f"(unreadable alert at offset {rec.offset})")
                        elif statuses is None:
                            sys.stdout.write(rec.value.decode("utf-8", "replace") + "\n")
                        continue
                    if as_json:  # every revision, as written
                        if statuses is None or status in statuses:
                            sys.stdout.write(rec.value.decode("utf-8", "replace") + "\n")
                        continue
                    try:
                        board.show(doc)
                    except (AttributeError, TypeError):
                        board.note(f"(unreadable alert at offset {rec.offset})")
            sys.stdout.flush()
    finally:
        await consumer.stop()
    return 0


def run_alerts(args: argparse.Namespace, settings: Settings) -> int:
    """`frwatch alerts tail [--from-beginning] [--json] [--status S]...`."""
    try:
        return _run_checked(
            settings,
            _tail(
                settings,
                args.from_beginning,
                args.json,
                args.max,
                args.idle_exit,
                frozenset(args.status) if args.status else None,
            ),
            (settings.topic_alerts,),
        )
    except KafkaConnectionError as exc:
        return _fail("alerts tail", f"cannot reach broker {settings.broker}: {exc}")
    except (KafkaAccessError, KafkaError) as exc:
        return _refusal("alerts tail", exc, f"read topic {settings.topic_alerts}")
