"""The alerts an investigation keeps: per alert_id the highest revision, read from the output."""

from __future__ import annotations

import io
import re
from typing import Any

import orjson

from streams.core.rules import load_rules
from streams.investigate.alert_book import AlertBook, recording
from streams.investigate.report import (
    ReportInputs,
    condition_text,
    render_report,
    requirement_text,
)
from streams.investigate.timeline import MatchTimelines

RULES = load_rules()


def alert(aid: str, **extra: Any) -> dict[str, Any]:
    return {
        "alert_id": aid,
        "rule_id": "FR-005",
        "title": "t",
        "severity": "medium",
        "group_by": "account_id",
        "group_key": "acct-v",
        "account": {"account_id": "acct-v"},
        "window": {"start": "2026-11-18T11:00:00.000Z", "end": "2026-11-18T12:00:00.000Z"},
        "observed": {"count": 3, "distinct": None},
        "evidence": {"first_ts": None, "last_ts": None, "samples": []},
        **extra,
    }


def test_the_highest_revision_wins_whatever_the_order() -> None:
    book = AlertBook()
    book.add(alert("a", status="open", revision=0))
    book.add(alert("a", status="closed", revision=2, observed={"count": 40, "distinct": None}))
    book.add(alert("a", status="update", revision=1))
    book.add(alert("b"))  # no lifecycle fields: one message per alert
    assert len(book) == 2
    assert book.get("a")["revision"] == 2  # type: ignore[index]
    assert book.get("a")["observed"]["count"] == 40  # type: ignore[index]
    assert list(book.by_rule()["FR-005"]) == ["a", "b"]


def test_recording_passes_bytes_through_and_reads_lines_split_across_writes() -> None:
    sink = io.BytesIO()
    book = AlertBook()
    out = recording(sink, book)
    data = orjson.dumps(alert("a")) + b"\n" + orjson.dumps(alert("b")) + b"\n"
    for i in range(0, len(data), 7):
        out.write(data[i : i + 7])
    out.flush()
    assert sink.getvalue() == data
    assert [d["alert_id"] for d in book] == ["a", "b"]
    nowhere = AlertBook()
    recording(None, nowhere).write(data)
    assert len(nowhere) == 2


def _lifecycle_rows(html: str) -> dict[str, str]:
    table = html.split('<table class="lifecycle">', 1)[1].split("</table>", 1)[0]
    return dict(re.findall(r"<tr><td>([^<]+)</td><td>([^<]*)</td></tr>", table))


def _page(doc: dict[str, Any]) -> str:
    book = AlertBook()
    book.add(doc)
    inputs = ReportInputs(("a.jsonl",), RULES, None, "every record", {"events": 1})
    return render_report(inputs, book, MatchTimelines(RULES))


def test_the_report_shows_lifecycle_figures_when_alerts_carry_them() -> None:
    rows = _lifecycle_rows(
        _page(
            alert(
                "a",
                status="closed",
                revision=3,
                observed={"count": 120000, "distinct": None, "estimated": True},
            )
        )
    )
    assert rows["count"] == "120000"
    assert rows["estimated"] == "true"
    assert rows["status"] == "closed"
    assert rows["revision"] == "3"


def test_the_report_leaves_out_lifecycle_fields_that_alerts_do_not_have() -> None:
    rows = _lifecycle_rows(_page(alert("a")))
    assert rows["count"] == "3"
    assert not {"status", "revision", "estimated"} & set(rows)


def test_requirements_read_as_the_rules_file_means_them() -> None:
    fr007 = RULES.by_id("FR-007")
    assert [requirement_text(q) for q in fr007.requires] == [
        "count(fr_kind == enroll) >= 20",
        "count(identification) >= 1",
    ]
    assert requirement_text(RULES.by_id("FR-006").requires[0]) == "distinct(subject_ids) >= 50"
    assert (
        condition_text({"all": [{"field": "a", "in": ["x", "y"]}, {"not": {"ref": "q"}}]})
        == "(a in {x, y} and not (q))"
    )
    assert condition_text({"field": "x", "is_null": True}) == '{"field":"x","is_null":true}'
