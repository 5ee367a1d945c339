"""`--report FILE.html`: one self-contained page for investigators (SPEC 6).

The page is rendered with Jinja2 (autoescaping on: every value from the archive is
attacker-controlled text) and holds everything inline: CSS in a <style> element and one
matplotlib SVG per alert, so it opens from disk with no network. Alerts carry request
metadata only (SPEC 5); the report shows only the sample fields an alert may carry.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from streams import __version__
from streams.core.rules import Requirement, Rule, RuleSet
from streams.investigate.alert_book import AlertBook
from streams.investigate.timeline import MatchTimelines
from topics.alerts import ACCOUNT_FIELDS, SAMPLE_FIELDS
from topics.timestamps import format_ms, parse_rfc3339_ms

#: alerts drawn with a picture; beyond, alerts are listed without one (and the page says so)
MAX_PICTURES = 1000
SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}


class ReportError(OSError):
    """The report file cannot be written; the message names it."""


def check_writable(path: str) -> None:
    """Fail before the replay starts when the report could not be written at the end."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ReportError(f"{path}: cannot write the report: is a directory")
    if not os.path.isdir(folder):
        raise ReportError(f"{path}: cannot write the report: no directory {folder}")
    if not os.access(folder, os.W_OK):
        raise ReportError(f"{path}: cannot write the report: {folder} is not writable")


_OPERATORS = {
    "equals": "==",
    "not_equals": "!=",
    "in": "in",
    "not_in": "not in",
    "gte": ">=",
    "gt": ">",
    "lte": "<=",
    "lt": "<",
    "contains": "contains",
    "not_contains": "not contains",
}


def condition_text(node: Any) -> str:
    """A rules-file condition as one readable line (`fr_kind == enroll`); JSON if unusual."""
    if isinstance(node, dict):
        if set(node) == {"ref"}:
            return str(node["ref"])
        if set(node) == {"not"}:
            return f"not ({condition_text(node['not'])})"
        for op in ("all", "any") if len(node) == 1 else ():
            if isinstance(node.get(op), list):
                joiner = " and " if op == "all" else " or "
                return "(" + joiner.join(condition_text(n) for n in node[op]) + ")"
        ops = [k for k in node if k in _OPERATORS]
        if "field" in node and len(node) == 2 and len(ops) == 1:
            value = node[ops[0]]
            shown = "{" + ", ".join(map(str, value)) + "}" if isinstance(value, list) else value
            return f"{node['field']} {_OPERATORS[ops[0]]} {shown}"
    return orjson.dumps(node).decode()


def requirement_text(req: Requirement) -> str:
    """`count >= 3`, `distinct(subject_ids) >= 50`, `count(fr_kind == enroll) >= 20`."""
    if req.kind == "count":
        what = "count" if req.where_text is None else f"count({condition_text(req.where_text)})"
    else:
        what = f"distinct({req.field})"
        if req.where_text is not None:
            what += f" where {condition_text(req.where_text)}"
    return f"{what} >= {req.at_least}"


def _window_text(ms: int) -> str:
    hours, rest = divmod(ms, 3_600_000)
    if rest == 0:
        return f"{hours}h"
    return f"{ms // 60_000}m" if ms % 60_000 == 0 else f"{ms}ms"


def _sample_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, dict):
        return ", ".join(f"{k}: {x}" for k, x in v.items() if x is not None)
    return str(v)


@dataclass(frozen=True, slots=True)
class ReportInputs:
    """What the page says about the run itself."""

    archives: Sequence[str]
    rules: RuleSet
    accounts: str | None
    selection: str
    summary: dict[str, Any]


def _rule_rows(rules: RuleSet, book: AlertBook, timelines: MatchTimelines) -> list[dict[str, Any]]:
    by_rule = book.by_rule()
    rows = []
    for r in rules.rules:
        alerts = list(by_rule.get(r.id, {}).values())
        statuses: dict[str, int] = {}
        for a in alerts:
            if "status" in a:
                statuses[a["status"]] = statuses.get(a["status"], 0) + 1
        rows.append(
            {
                "rule": r,
                "window": _window_text(r.window_ms),
                "requires": " and ".join(requirement_text(q) for q in r.requires),
                "matched": timelines.matched.get(r.id, 0),
                "alerts": len(alerts),
                "groups": len({a["group_key"] for a in alerts}),
                "largest": max((a["observed"]["count"] for a in alerts), default=None),
                "statuses": ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())),
            }
        )
    return rows


def _alert_view(
    doc: dict[str, Any], rule: Rule | None, timelines: MatchTimelines, draw: bool
) -> dict[str, Any]:
    start = parse_rfc3339_ms(doc["window"]["start"])
    end = parse_rfc3339_ms(doc["window"]["end"])
    observed = doc.get("observed") or {}
    lifecycle = [("count", observed.get("count")), ("distinct", observed.get("distinct"))]
    if "estimated" in observed:
        lifecycle.append(("estimated", observed["estimated"]))
    for key in ("status", "revision"):
        if key in doc:
            lifecycle.append((key, doc[key]))
    lifecycle.append(("detected at", doc.get("detected_at")))
    lifecycle = [(k, str(v).lower() if isinstance(v, bool) else v) for k, v in lifecycle]
    picture = None
    partial = False
    if draw:
        from markupsafe import Markup

        from streams.investigate.charts import Threshold, timeline_svg

        tl = timelines.around(doc["rule_id"], doc["group_key"], start, end)
        partial = tl.partial
        thresholds = (
            [Threshold(requirement_text(q), q.at_least) for q in rule.requires] if rule else []
        )
        picture = Markup(
            timeline_svg(tl, start, end, thresholds, doc["alert_id"])
        )  # matplotlib's own SVG, not input text
    evidence = doc.get("evidence") or {}
    samples = [
        [_sample_value(s.get(f)) for f in SAMPLE_FIELDS] for s in evidence.get("samples") or ()
    ]
    account = doc.get("account") or {}
    return {
        "doc": doc,
        "anchor": f"alert-{doc['alert_id']}",
        "account": [(k, account.get(k)) for k in ACCOUNT_FIELDS],
        "lifecycle": lifecycle,
        "requires": " and ".join(requirement_text(q) for q in rule.requires) if rule else "",
        "first_ts": evidence.get("first_ts"),
        "last_ts": evidence.get("last_ts"),
        "samples": samples,
        "picture": picture,
        "partial": partial,
        "related": doc.get("related") or [],
    }


def render_report(inputs: ReportInputs, book: AlertBook, timelines: MatchTimelines) -> str:
    """The whole page as text."""
    # imported here: matplotlib and Jinja2 cost a replay without --report a second to load
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("streams.investigate", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    rules = {r.id: r for r in inputs.rules.rules}
    docs = sorted(
        book,
        key=lambda d: (
            d["window"]["start"],
            SEVERITY_ORDER.get(d.get("severity", ""), 9),
            d["rule_id"],
            d["group_key"],
        ),
    )
    alerts = [
        _alert_view(d, rules.get(d["rule_id"]), timelines, i < MAX_PICTURES)
        for i, d in enumerate(docs)
    ]
    return env.get_template("report.html.j2").render(
        generated_at=format_ms(int(time.time() * 1000)),
        version=__version__,
        inputs=inputs,
        rule_rows=_rule_rows(inputs.rules, book, timelines),
        alerts=alerts,
        sample_fields=SAMPLE_FIELDS,
        max_pictures=MAX_PICTURES,
        dropped_buckets=timelines.dropped,
        known_ids={d["alert_id"] for d in docs},
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_report(
    path: str, inputs: ReportInputs, book: AlertBook, timelines: MatchTimelines
) -> None:
    """Render and write the page atomically (a reader never sees half a report)."""
    page = render_report(inputs, book, timelines)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        raise ReportError(f"{path}: cannot write the report: {exc.strerror or exc}") from None
