"""What `frwatch replay`'s investigation flags add to a replay, prepared before it starts.

An `Investigation` checks the flags (selection values, the OLD rules file, the report
path) before any record is read, gives the replay its selection, taps and output, and
afterwards prints the comparison and writes the report.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import BinaryIO, TextIO

import orjson

from streams.core.rules import RulesError, RuleSet, load_rules
from streams.investigate.alert_book import AlertBook, recording
from streams.investigate.compare import ShadowRun, compare, render_table
from streams.investigate.report import ReportInputs, check_writable, write_report
from streams.investigate.select import Selection, SelectionError, parse_selection
from streams.investigate.timeline import MatchTimelines
from streams.replay import ReplaySummary, ReplayTap
from topics.accounts import AccountRecord
from topics.requests import RequestEvent


class InvestigationError(ValueError):
    """A flag of the investigation that cannot work; one line for the user."""


class Investigation:
    """The selection, shadow run and report of one replay."""

    def __init__(
        self,
        rules: RuleSet,
        selection: Selection,
        old_rules: RuleSet | None = None,
        as_json: bool = False,
        report_path: str | None = None,
        archives: tuple[str, ...] = (),
        accounts_path: str | None = None,
    ) -> None:
        self.rules = rules
        self.selection = selection
        self.as_json = as_json
        self.report_path = report_path
        self.archives = archives
        self.accounts_path = accounts_path
        self.alerts = AlertBook()
        self.shadow = ShadowRun(old_rules, rules) if old_rules is not None else None
        self.timelines = MatchTimelines(rules) if report_path is not None else None

    @classmethod
    def from_args(cls, args: argparse.Namespace, rules: RuleSet) -> Investigation:
        """Check the flags; InvestigationError names the first bad one."""
        try:
            selection = parse_selection(args.since, args.until, args.account, args.org)
        except SelectionError as exc:
            raise InvestigationError(str(exc)) from None
        old_rules = None
        if args.compare_rules:
            try:
                old_rules = load_rules(args.compare_rules)
            except RulesError as exc:
                raise InvestigationError(f"--compare-rules: {exc}") from None
        elif args.json:
            raise InvestigationError("--json is the output form of --compare-rules")
        if args.report:
            try:
                check_writable(args.report)
            except OSError as exc:
                raise InvestigationError(str(exc)) from None
        return cls(
            rules,
            selection,
            old_rules=old_rules,
            as_json=bool(args.json),
            report_path=args.report,
            archives=tuple(args.archives),
            accounts_path=args.accounts,
        )

    @property
    def select(self) -> Callable[[RequestEvent, AccountRecord | None], bool] | None:
        """The replay's record filter (None when every record is evaluated)."""
        return self.selection.admits if self.selection.narrows else None

    @property
    def taps(self) -> tuple[ReplayTap, ...]:
        """What must see every evaluated event."""
        taps: list[ReplayTap] = []
        if self.shadow is not None:
            taps.append(self.shadow)
        if self.timelines is not None:
            taps.append(self.timelines)
        return tuple(taps)

    def output(self, sink: BinaryIO | None) -> BinaryIO:
        """Where the replay writes its alerts: `sink`, recorded for the comparison and report."""
        if sink is not None and self.shadow is None and self.timelines is None:
            return sink  # a plain replay keeps no alerts in memory
        return recording(sink, self.alerts)

    @property
    def needs_one_process(self) -> bool:
        """Taps and the selection hook into the one-process replay loop (`replay`)."""
        return bool(self.taps) or self.select is not None

    @property
    def replaces_stdout(self) -> bool:
        """With --compare-rules, stdout holds the comparison (alerts go only to --out)."""
        return self.shadow is not None

    def conclude(self, summary: ReplaySummary, stdout: TextIO) -> None:
        """Print the comparison and write the report (ReportError when it cannot be written)."""
        if self.shadow is not None:
            diffs = compare(self.shadow.rules, self.shadow.alerts, self.rules, self.alerts)
            if self.as_json:
                for d in diffs:
                    stdout.write(d.to_json().decode() + "\n")
            else:
                old_name = os.path.basename(self.shadow.rules.path)
                new_name = os.path.basename(self.rules.path)
                for line in render_table(diffs, old_name, new_name):
                    stdout.write(line + "\n")
            stdout.flush()
        if self.report_path is not None and self.timelines is not None:
            inputs = ReportInputs(
                archives=self.archives,
                rules=self.rules,
                accounts=self.accounts_path,
                selection=self.selection.describe(),
                summary=_summary_fields(summary),
            )
            write_report(self.report_path, inputs, self.alerts, self.timelines)


def _summary_fields(summary: ReplaySummary) -> dict[str, object]:
    doc: dict[str, object] = orjson.loads(summary.to_json())
    return doc
