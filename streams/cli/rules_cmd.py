"""`frwatch rules show` and `frwatch rules check`."""

from __future__ import annotations

import argparse
import os
import sys

import orjson

from streams.core.rules import RulesError, RuleSet, load_rules


def _window_text(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _requirement_text(rules: RuleSet) -> dict[str, str]:
    out = {}
    for r in rules.rules:
        parts = []
        for q in r.requires:
            what = "count" if q.kind == "count" else f"distinct({q.field})"
            where = f" where {orjson.dumps(q.where_text).decode()}" if q.where_text else ""
            parts.append(f"{what} >= {q.at_least}{where}")
        out[r.id] = " and ".join(parts)
    return out


def run_rules(args: argparse.Namespace) -> int:
    """Print the loaded rules, or validate a file."""
    if args.rules_command == "check":
        try:
            rules = load_rules(args.file)
        except RulesError as exc:
            for problem in exc.problems:  # every error the validator found, one line each
                print(f"frwatch rules check: error: {problem}", file=sys.stderr)
            return 2
        print(f"{args.file}: ok, {len(rules.rules)} rules, sha256 {rules.sha256}")
        return 0
    try:
        rules = load_rules(args.rules or os.environ.get("FRWATCH_RULES") or None)
    except RulesError as exc:
        print(f"frwatch rules show: error: {exc}", file=sys.stderr)
        return 2
    fires = _requirement_text(rules)
    if args.json:
        for r in rules.rules:
            doc = {
                "id": r.id,
                "title": r.title,
                "clause": r.clause,
                "severity": r.severity,
                "tags": list(r.tags),
                "group_by": r.group_by,
                "window": _window_text(r.window_ms),
                "match": r.source.get("match"),
                "fires_when": fires[r.id],
            }
            print(orjson.dumps(doc).decode())
        return 0
    print(f"rules: {rules.path} (sha256 {rules.sha256}), {len(rules.rules)} rules")
    for r in rules.rules:
        print(
            f"{r.id:8} {r.severity:8} per {r.group_by:10} {_window_text(r.window_ms):>4}  "
            f"{fires[r.id]:40}  {r.title}"
        )
    return 0
