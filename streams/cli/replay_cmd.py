"""`frwatch replay` and its exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from typing import BinaryIO

from streams.archive import ArchiveError
from streams.core.rules import RulesError, load_rules
from streams.investigate.report import ReportError
from streams.investigate.session import Investigation, InvestigationError
from streams.replay import load_accounts, open_all, replay, stderr_progress
from topics.accounts import AccountDirectory
from topics.formats import FormatError, describe_problem, load_format

EXIT_USAGE = 2


def _fail(message: str) -> int:
    print(f"frwatch replay: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run_replay(args: argparse.Namespace) -> int:
    """Check every input first, then replay; the summary line goes to stderr."""
    try:
        rules = load_rules(args.rules or os.environ.get("FRWATCH_RULES") or None)
    except RulesError as exc:
        return _fail(str(exc))
    try:
        input_format = load_format(
            args.input_format or os.environ.get("FRWATCH_INPUT_FORMAT") or None
        )
    except FormatError as exc:
        return _fail(describe_problem(exc))
    try:
        investigation = Investigation.from_args(args, rules)
    except InvestigationError as exc:
        return _fail(str(exc))
    try:
        archives = open_all(args.archives)
        accounts = (
            load_accounts(args.accounts, lambda m: print(m, file=sys.stderr))
            if args.accounts
            else AccountDirectory()
        )
    except (ArchiveError, ValueError) as exc:
        return _fail(str(exc))
    out: BinaryIO | None
    if args.out:
        try:
            out = open(args.out, "wb")  # noqa: SIM115 - closed below
        except OSError as exc:
            return _fail(f"{args.out}: cannot write: {exc.strerror or exc}")
    else:
        out = None if investigation.replaces_stdout else sys.stdout.buffer
    try:
        workers = args.workers or 1
        if workers > 1 and investigation.needs_one_process:
            print(
                "frwatch replay: --since/--until/--account/--org/--compare-rules/--report run"
                " in one process (--workers ignored)",
                file=sys.stderr,
            )
            workers = 1
        if workers > 1:
            from streams.replay_parallel import replay_parallel

            summary = replay_parallel(
                archives,
                rules,
                accounts,
                investigation.output(out),
                workers,
                stderr_progress(),
                input_format=input_format,
            )
        else:
            summary = replay(
                archives,
                rules,
                accounts,
                investigation.output(out),
                stderr_progress(),
                input_format=input_format,
                select=investigation.select,
                taps=investigation.taps,
            )
        investigation.conclude(summary, sys.stdout)
    except (ArchiveError, ReportError) as exc:
        return _fail(str(exc))
    except BrokenPipeError:
        return 0
    finally:
        if args.out and out is not None:
            out.close()
    print(summary.to_json(), file=sys.stderr)
    return 0
