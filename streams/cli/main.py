"""`frwatch` entry point: argument parsing and dispatch; commands live in sibling modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from streams import __version__
from streams.kafka_config import KafkaConfigError
from streams.settings import SETTINGS, Settings, SettingsError, settings_from_env

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad usage: one line on stderr, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad usage in one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _settings_flags(p: argparse.ArgumentParser, which: Sequence[str] | None = None) -> None:
    group = p.add_argument_group("settings (flags override the environment variables)")
    for field, env, default, help_text in SETTINGS:
        if which is not None and field not in which:
            continue
        flag = "--" + field.replace("_", "-")
        shown = default or "built-in catalog" if field == "rules" else default
        group.add_argument(
            flag, dest=f"set_{field}", metavar=env, help=f"{help_text} [env {env}, default {shown}]"
        )


def settings_of(args: argparse.Namespace) -> Settings:
    """Settings from the environment with this command's flags applied."""
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("set_")}
    try:
        return settings_from_env(overrides=overrides)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None


KAFKA = (
    "broker",
    "kafka_config",
    "topic_requests",
    "topic_accounts",
    "topic_alerts",
    "topic_dlq",
    "topic_exceptions",
    "topic_rules",
)


def build_parser() -> OneLineParser:
    """The full command tree."""
    p = OneLineParser(
        prog="frwatch",
        description=(
            "Detect prohibited facial-recognition use in an AI API request stream. "
            "Settings come from FRWATCH_* environment variables; flags override them."
        ),
    )
    p.add_argument("--version", action="version", version=f"frwatch {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True

    w = sub.add_parser("worker", help="run the live detector (Faust worker)")
    w.add_argument("--loglevel", default="warning", choices=["debug", "info", "warning", "error"])
    _settings_flags(w)

    r = sub.add_parser("replay", help="run archived events through the detector, offline")
    r.add_argument("--accounts", metavar="FILE", help="account records, JSON lines")
    r.add_argument(
        "--rules", metavar="FILE", help="rules file [env FRWATCH_RULES, default built-in]"
    )
    r.add_argument(
        "--input-format",
        metavar="F",
        help="input format: frwatch, azure-resource-log or a format file"
        " [env FRWATCH_INPUT_FORMAT, default frwatch]",
    )
    r.add_argument(
        "--exceptions",
        metavar="FILE",
        help="exceptions (SPEC 4.4), JSON lines, applied by event time as live",
    )
    r.add_argument("--out", metavar="FILE", help="write alerts here (default stdout)")
    r.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes that share the work, sharded by group key (same alerts as one)",
    )
    inv = r.add_argument_group("investigation (docs/investigations.md)")
    inv.add_argument(
        "--since", metavar="T", help="evaluate records from this event time (RFC 3339)"
    )
    inv.add_argument(
        "--until", metavar="T", help="evaluate records before this event time (exclusive)"
    )
    inv.add_argument(
        "--account",
        action="append",
        metavar="ID",
        help="evaluate this account's records (repeatable)",
    )
    inv.add_argument(
        "--org",
        action="append",
        metavar="ID",
        help="evaluate the records of this organisation's accounts, per --accounts (repeatable)",
    )
    inv.add_argument(
        "--compare-rules",
        metavar="OLD",
        help="also run the rules file OLD and print, per rule, the alerts only under OLD, only"
        " under the new rules and under both (instead of the alerts, which go to --out)",
    )
    inv.add_argument("--json", action="store_true", help="the comparison as JSON lines")
    inv.add_argument(
        "--report",
        metavar="FILE.html",
        help="write a self-contained HTML page: alerts, evidence and a timeline per alert",
    )
    r.add_argument(
        "archives",
        nargs="+",
        metavar="ARCHIVE",
        help="JSON-lines file, .gz, -, or a directory written by frwatch archive",
    )

    rules = sub.add_parser("rules", help="show or check rules")
    rsub = rules.add_subparsers(dest="rules_command", metavar="ACTION", parser_class=OneLineParser)
    rsub.required = True
    show = rsub.add_parser("show", help="print the loaded rules")
    show.add_argument("--rules", metavar="FILE", help="rules file [env FRWATCH_RULES]")
    show.add_argument("--json", action="store_true", help="one JSON object per rule")
    check = rsub.add_parser("check", help="validate a rules file (exit 0 or 2)")
    check.add_argument("file", metavar="FILE")
    deploy = rsub.add_parser(
        "deploy",
        help="validate a rules file and publish it to the rules topic, which workers started"
        " with FRWATCH_RULES=kafka: follow",
    )
    deploy.add_argument("file", metavar="FILE")
    _settings_flags(deploy, ("broker", "kafka_config", "topic_rules"))

    t = sub.add_parser("topics", help="manage topics")
    tsub = t.add_subparsers(dest="topics_command", metavar="ACTION", parser_class=OneLineParser)
    tsub.required = True
    tc = tsub.add_parser("create", help="create the topics (idempotent)")
    tc.add_argument(
        "--requests-partitions",
        type=int,
        default=None,
        metavar="N",
        help="partitions of the requests topic (default: FRWATCH_PARTITIONS)",
    )
    _settings_flags(tc, (*KAFKA, "app_id", "partitions"))

    a = sub.add_parser("accounts", help="account metadata")
    asub = a.add_subparsers(dest="accounts_command", metavar="ACTION", parser_class=OneLineParser)
    asub.required = True
    al = asub.add_parser("load", help="publish account records (JSON lines) to the accounts topic")
    al.add_argument("file", metavar="FILE")
    _settings_flags(al, KAFKA)

    _exceptions_parser(sub)

    pub = sub.add_parser(
        "publish",
        help="publish an archive to the requests topic, in file order",
        description=(
            "Publish archives (JSON lines, .gz, or -) to the requests topic in file order, "
            "with an idempotent producer (acks=all), checking that Kafka acknowledged every "
            "line. A line that Kafka refuses for its size is named on stderr and the others "
            "still go. If Kafka does not acknowledge anything for --give-up-after seconds "
            "(a broker outage), publish stops with one line giving the number of lines "
            "sent and the first line not sent, and exits 2; run it again with --from-line "
            "that line to resume. At the end it prints one JSON summary line on stderr; "
            "exit 0 when every line was sent, 2 when a line was refused."
        ),
    )
    pub.add_argument("--batch", type=int, metavar="K", help="send K records per message (batch)")
    pub.add_argument(
        "--topic", metavar="T", help="publish to topic T (default: the requests topic)"
    )
    pub.add_argument(
        "--from-line",
        type=int,
        metavar="N",
        help="start at line N (1-based, counting every line of the archives in the order "
        "given, blank ones too): resumes a publish that stopped, from the first line it "
        "did not send",
    )
    pub.add_argument(
        "--give-up-after",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="stop (exit 2, saying how far it got) after this long without an "
        "acknowledgement from Kafka (default 60)",
    )
    pub.add_argument(
        "archives",
        nargs="+",
        metavar="ARCHIVE",
        help="JSON-lines file, .gz, -, or a directory written by frwatch archive",
    )
    _settings_flags(pub, KAFKA)

    arc = sub.add_parser(
        "archive",
        help="copy the requests topic into hourly gzip JSON-lines files, for replay",
        description=(
            "Copy the requests topic into DIR as it arrives: gzip JSON-lines files by hour "
            "(of the Kafka timestamp, UTC) and partition, each message's value as sent, one "
            "line a message (docs/formats.md). A file is complete (fsynced, renamed) before "
            "its offsets are committed in the group <app id>-archive, so a crash loses "
            "nothing and a restart writes no message twice. Runs until SIGTERM/SIGINT, then "
            "completes its open files and commits. Metrics frwatch_archive_* on /metrics at "
            "--web-bind:--web-port (docs/operations.md)."
        ),
    )
    arc.add_argument("--dir", required=True, metavar="DIR", help="the archive directory")
    arc.add_argument(
        "--keep-days",
        type=int,
        metavar="N",
        help="remove hours that ended more than N days ago (default: keep everything)",
    )
    arc.add_argument(
        "--max-file-bytes",
        type=int,
        default=64 << 20,
        metavar="N",
        help="complete a file once its lines hold N bytes, uncompressed (default 64 MiB)",
    )
    arc.add_argument(
        "--max-file-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="complete a file once it has been open S seconds, so that commits advance "
        "(default 60)",
    )
    _settings_flags(
        arc,
        (
            "broker",
            "kafka_config",
            "app_id",
            "topic_requests",
            "web_bind",
            "web_port",
            "instance_id",
        ),
    )

    al2 = sub.add_parser("alerts", help="read alerts")
    alsub = al2.add_subparsers(dest="alerts_command", metavar="ACTION", parser_class=OneLineParser)
    alsub.required = True
    tail = alsub.add_parser("tail", help="follow the alerts topic")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--json", action="store_true", help="raw alert JSON, one line per revision")
    tail.add_argument(
        "--status",
        action="append",
        choices=("open", "update", "closed"),
        help="only revisions of this status (repeatable)",
    )
    tail.add_argument("--max", type=int, metavar="N", help="stop after N alert messages")
    tail.add_argument(
        "--idle-exit",
        type=float,
        metavar="SECONDS",
        help="stop after this long without a new alert",
    )
    _settings_flags(tail, KAFKA)

    acl = sub.add_parser(
        "acls", help="print the least-privilege Kafka ACLs as kafka-acls.sh commands"
    )
    acl.add_argument(
        "--role",
        default="worker",
        choices=["worker", "analyst", "archive"],
        help="whose ACLs (default worker)",
    )
    acl.add_argument(
        "--principal", metavar="P", help="e.g. User:frwatch-worker (default User:<app id>)"
    )
    acl.add_argument(
        "--command-config",
        default="admin.properties",
        metavar="FILE",
        help="the admin's client config that the printed commands name",
    )
    _settings_flags(
        acl, ("broker", "app_id", "topic_requests", "topic_accounts", "topic_alerts", "topic_dlq")
    )

    b = sub.add_parser("bench", help="measure throughput and latency")
    b.add_argument("--events", type=int, default=200_000, metavar="N")
    b.add_argument("--batch", type=int, default=1, metavar="K", help="records per message")
    b.add_argument("--offline", action="store_true", help="replay speed only, no broker")
    b.add_argument("--json", action="store_true", help="end with one JSON object")
    _settings_flags(b, (*KAFKA, "partitions", "screening_processes", "store"))
    return p


def _exceptions_parser(sub: Any) -> None:
    """`frwatch exceptions add | list | remove` (SPEC 4.4)."""
    ex = sub.add_parser("exceptions", help="approved uses kept from rules, with owner and expiry")
    exsub = ex.add_subparsers(
        dest="exceptions_command", metavar="ACTION", parser_class=OneLineParser
    )
    exsub.required = True
    kafka = ("broker", "kafka_config", "topic_exceptions")
    add = exsub.add_parser("add", help="publish an exception and print it (its id first)")
    add.add_argument("--rules", required=True, metavar="ID[,ID]", help="rule ids, or *")
    which = add.add_mutually_exclusive_group(required=True)
    which.add_argument("--account", metavar="ID", help="events of this account_id")
    which.add_argument("--org", metavar="ID", help="events of accounts of this org_id")
    which.add_argument("--api-key", metavar="ID", help="events with this api_key_id")
    which.add_argument("--match", metavar="JSON", help="a condition of the rules file, as JSON")
    add.add_argument("--reason", required=True, metavar="TEXT", help="why (required)")
    add.add_argument("--owner", required=True, metavar="TEXT", help="who answers for it")
    add.add_argument(
        "--expires",
        required=True,
        metavar="DURATION|TIME",
        help="a duration from now (90d) or an RFC 3339 time; at most 366 days",
    )
    add.add_argument("--ticket", metavar="T", help="the approval's ticket")
    _settings_flags(add, kafka)
    ls = exsub.add_parser(
        "list", help="every exception, active or expired, with its hits on the worker"
    )
    ls.add_argument("--json", action="store_true", help="one JSON object per exception")
    _settings_flags(ls, (*kafka, "web_bind", "web_port"))
    rm = exsub.add_parser("remove", help="remove an exception (a tombstone on the topic)")
    rm.add_argument("exception_id", metavar="ID")
    _settings_flags(rm, kafka)


def _positive(args: argparse.Namespace, name: str) -> None:
    v = getattr(args, name, None)
    if v is not None and v < 1:
        raise UsageError(f"--{name.replace('_', '-')} must be >= 1")


def dispatch(args: argparse.Namespace) -> int:
    """Run the chosen command; returns the exit code."""
    for name in ("batch", "events", "max", "requests_partitions", "from_line", "workers"):
        _positive(args, name)
    if getattr(args, "give_up_after", 1.0) <= 0:
        raise UsageError("--give-up-after must be > 0")
    cmd = args.command
    if cmd == "replay":
        from streams.cli.replay_cmd import run_replay

        return run_replay(args)
    if cmd == "rules" and args.rules_command != "deploy":
        from streams.cli.rules_cmd import run_rules

        return run_rules(args)
    if cmd == "bench":
        from streams.cli.bench import run_bench

        return run_bench(args, settings_of(args))
    settings = settings_of(args)
    if cmd == "acls":
        from streams.cli.acls import run_acls

        return run_acls(args, settings)
    from streams.kafkaio import kafka_client_config

    kafka_client_config(settings)  # a bad properties file: one line, exit 2, before connecting
    if cmd == "worker":
        from streams.app.worker import run_worker

        return run_worker(settings, args.loglevel)
    if cmd == "archive":
        from streams.cli.archive_cmd import run_archive

        return run_archive(args, settings)
    from streams.cli import ops

    handlers: dict[str, Any] = {
        "topics": ops.run_topics,
        "accounts": ops.run_accounts,
        "publish": ops.run_publish,
        "alerts": ops.run_alerts,
        "rules": ops.run_rules_deploy,
        "exceptions": _run_exceptions,
    }
    return int(handlers[cmd](args, settings))


def _run_exceptions(args: argparse.Namespace, settings: Settings) -> int:
    from streams.cli.exceptions_cmd import run_exceptions

    return run_exceptions(args, settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return dispatch(args)
    except UsageError as exc:
        print(f"frwatch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KafkaConfigError as exc:
        print(f"frwatch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `frwatch ... | head`: the reader left, nothing is wrong
        return 0


if __name__ == "__main__":
    sys.exit(main())
