"""`frwatch acls`: the least-privilege Kafka ACLs of a worker (or analyst, archive), as
`kafka-acls.sh` commands an administrator runs."""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass

from streams.settings import Settings

ROLES = ("worker", "analyst", "archive")


@dataclass(frozen=True, slots=True)
class Grant:
    """Operations allowed on one resource (a topic, a topic prefix or a group)."""

    resource: str  # "topic" or "group"
    name: str
    operations: tuple[str, ...]
    prefixed: bool = False
    why: str = ""


def archive_group(settings: Settings) -> str:
    """The consumer group `frwatch archive` commits its offsets in."""
    return f"{settings.app_id}-archive"


def grants(settings: Settings, role: str) -> list[Grant]:
    """What `role` needs, nothing more (SPEC 6.1)."""
    if role == "analyst":
        return [Grant("topic", settings.topic_alerts, ("Read",), why="read alerts")]
    if role == "archive":
        return [
            Grant("topic", settings.topic_requests, ("Read",), why="copy the requests"),
            Grant("group", archive_group(settings), ("Read",), why="commit its offsets"),
        ]
    app = settings.app_id
    return [
        # Read implies Describe (metadata); the account feed reads every partition itself
        Grant("topic", settings.topic_requests, ("Read",), why="input"),
        Grant("topic", settings.topic_accounts, ("Read",), why="account feed and audit"),
        # SPEC 4.3/4.4: the deployed rules (FRWATCH_RULES=kafka:) and the exceptions
        Grant("topic", settings.topic_exceptions, ("Read",), why="exceptions"),
        Grant("topic", settings.topic_rules, ("Read",), why="deployed rules"),
        # Write implies Describe and, since Kafka 3.0, the idempotent producer's rights
        Grant("topic", settings.topic_alerts, ("Write",), why="alerts"),
        Grant("topic", settings.topic_dlq, ("Write",), why="dead letters"),
        # Faust's consumer group is the app id; frwatch's own consumers use no group
        Grant("group", app, ("Read",), why="Faust's consumer group"),
        # <app>-detect, <app>-windows-changelog, <app>-__assignor-__leader: Faust creates
        # them at start when missing, reads and writes them
        Grant(
            "topic",
            f"{app}-",
            ("Create", "Read", "Write", "Describe"),
            prefixed=True,
            why="internal topics",
        ),
    ]


def acl_commands(
    settings: Settings, principal: str, role: str, command_config: str = "admin.properties"
) -> list[str]:
    """One `kafka-acls.sh --add` command per grant."""
    bootstrap = settings.bootstrap_servers[0]
    out = []
    for g in grants(settings, role):
        words = [
            "kafka-acls.sh",
            "--bootstrap-server",
            bootstrap,
            "--command-config",
            command_config,
            "--add",
            "--allow-principal",
            principal,
        ]
        for op in g.operations:
            words += ["--operation", op]
        words += [f"--{g.resource}", g.name]
        if g.prefixed:
            words += ["--resource-pattern-type", "prefixed"]
        out.append(shlex.join(words))
    return out


def run_acls(args: argparse.Namespace, settings: Settings) -> int:
    """`frwatch acls [--role R] [--principal P]`."""
    principal = args.principal or f"User:{settings.app_id}"
    print(f"# frwatch {args.role} ACLs for {principal} (app id {settings.app_id})")
    for line in acl_commands(settings, principal, args.role, args.command_config):
        print(line)
    return 0
