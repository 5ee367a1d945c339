"""`frwatch worker`: run the Faust application with its account feed and alert publisher."""

from __future__ import annotations

import sys

import faust

from streams.app.faust_app import build_app
from streams.core.rules import RulesError, load_rules
from streams.settings import Settings


def run_worker(settings: Settings, loglevel: str) -> int:
    """Start the worker in the foreground; returns when it stops."""
    try:
        rules = load_rules(settings.rules)
    except RulesError as exc:
        print(f"frwatch worker: error: {exc}", file=sys.stderr)
        return 2
    fw = build_app(settings, rules)
    # the feed and the publisher start before the app, so accounts are caught up before any
    # request is processed
    worker = faust.Worker(fw.app, fw.feed, fw.publisher, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0
