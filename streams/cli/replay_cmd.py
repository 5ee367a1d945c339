"""`frwatch replay` and its exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from typing import BinaryIO

from streams.archive import ArchiveError
from streams.core.rules import RulesError, load_rules
from streams.replay import load_accounts, open_all, replay, stderr_progress
from topics.accounts import AccountDirectory
from topics.exceptions import ExceptionSet, ExceptionsFileError, load_exceptions
from topics.formats import FormatError, describe_problem, load_format

EXIT_USAGE = 2


def _fail(message: str) -> int:
    print(f"frwatch replay: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _exceptions(path: str | None) -> ExceptionSet | None:
    """`--exceptions FILE` (JSON lines, SPEC 4.4); ExceptionsFileError names file, line, field."""
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            text = fh.read()
    except OSError as exc:
        raise ExceptionsFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return load_exceptions(path, text)


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
        archives = open_all(args.archives)
        accounts = (
            load_accounts(args.accounts, lambda m: print(m, file=sys.stderr))
            if args.accounts
            else AccountDirectory()
        )
        exceptions = _exceptions(args.exceptions)
    except (ArchiveError, ValueError) as exc:
        return _fail(str(exc))
    out: BinaryIO
    if args.out:
        try:
            out = open(args.out, "wb")  # noqa: SIM115 - closed below
        except OSError as exc:
            return _fail(f"{args.out}: cannot write: {exc.strerror or exc}")
    else:
        out = sys.stdout.buffer
    try:
        summary = replay(
            archives,
            rules,
            accounts,
            out,
            stderr_progress(),
            input_format=input_format,
            exceptions=exceptions,
        )
    except ArchiveError as exc:
        return _fail(str(exc))
    except BrokenPipeError:
        return 0
    finally:
        if args.out:
            out.close()
    print(summary.to_json(), file=sys.stderr)
    return 0
