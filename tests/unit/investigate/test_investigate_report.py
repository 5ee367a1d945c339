"""`frwatch replay --report FILE.html` (SPEC 6) in a real browser: Debian's chromium, headless,
loads the page from disk; every alert has its section and its timeline picture. A screenshot
is kept under the test's basetemp and copied to artifacts/report.png."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from investigation_cli import frwatch, jsonl, latest, write_accounts

from streams.synthetic import DEFAULT_START_MS, SCENARIO_RULES, demo_traffic

REPO = Path(__file__).resolve().parents[3]
ARTIFACT = REPO / "artifacts" / "report.png"
HOUR = 3_600_000


class PageOutline(HTMLParser):
    """What a page shows: alert sections (by data-alert-id), their pictures, the rule rows,
    and every attribute that could make the browser fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict[str, int]] = {}
        self.rule_rows: set[str] = set()
        self.fetching: list[str] = []
        self.tags: set[str] = set()
        self._stack: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        for name in ("src", "href", "xlink:href", "action", "poster", "data"):
            v = a.get(name)
            if v is not None and not v.startswith("#"):
                self.fetching.append(f"{tag} {name}={v}")
        if tag == "tr" and a.get("data-rule-id"):
            self.rule_rows.add(a["data-rule-id"] or "")
        current = next((s for _, s in reversed(self._stack) if s is not None), None)
        aid = a.get("data-alert-id") if tag == "section" else None
        if aid is not None:
            self.sections[aid] = {"svg": 0, "paths": 0, "samples": 0}
        elif current is not None:
            info = self.sections[current]
            if tag == "svg":
                info["svg"] += 1
            elif tag == "path":
                info["paths"] += 1
            elif tag == "tr":
                info["samples"] += 1
        if tag not in {"meta", "br", "img", "input", "link", "hr", "col"}:
            self._stack.append((tag, aid))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                del self._stack[i:]
                break


def outline(html: str) -> PageOutline:
    page = PageOutline()
    page.feed(html)
    page.close()
    return page


def missing_parts(page: PageOutline, alert_ids: list[str]) -> list[str]:
    """Every alert needs its section, a picture with drawn paths, and evidence rows."""
    problems = []
    for aid in alert_ids:
        info = page.sections.get(aid)
        if info is None:
            problems.append(f"{aid}: no section")
        elif info["svg"] < 1 or info["paths"] < 5:
            problems.append(f"{aid}: no timeline picture")
        elif info["samples"] < 2:  # the header row and at least one sample
            problems.append(f"{aid}: no evidence samples")
    return problems


def chromium() -> str:
    found = shutil.which("chromium")
    assert found, "Debian's chromium is needed: `make deps` (or apt-get install chromium)"
    return found


def browse(tmp_path: Path, page: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            # the page must not need the network: name resolution fails for every host
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            *flags,
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )


@pytest.fixture
def demo_events() -> list[dict[str, Any]]:
    return list(demo_traffic(7, DEFAULT_START_MS, background_per_scenario=40))


@pytest.fixture
def demo(tmp_path: Path, demo_events: list[dict[str, Any]]) -> tuple[Path, Path]:
    events = demo_events
    archive = tmp_path / "requests.jsonl"
    archive.write_bytes(jsonl(events))
    return archive, write_accounts(tmp_path / "accounts.jsonl")


def test_report_in_headless_chromium(
    tmp_path: Path, demo: tuple[Path, Path], demo_events: list[dict[str, Any]]
) -> None:
    archive, accounts = demo
    report = tmp_path / "report.html"
    r = frwatch("replay", "--accounts", accounts, "--report", report, archive)
    assert r.code == 0, r.stderr
    alerts = list(latest(r.lines).values())
    assert sorted(a["rule_id"] for a in alerts) == sorted(SCENARIO_RULES)
    ids = [a["alert_id"] for a in alerts]
    html = report.read_text(encoding="utf-8")

    # the file itself: self-contained, request metadata only
    source = outline(html)
    assert source.fetching == []
    assert not source.tags & {"script", "link", "img", "iframe", "object", "embed"}
    assert "@import" not in html
    assert re.findall(r"url\(\s*['\"]?(?!#)", html) == []  # only the SVGs' own clip paths
    subjects = {s for e in demo_events for s in e.get("subject_ids", ())}
    assert len(subjects) >= 50
    assert [s for s in subjects if s in html] == []

    # what the browser built from it, loaded from disk
    dom = browse(tmp_path, report, "--dump-dom").stdout
    page = outline(dom)
    assert missing_parts(page, ids) == []
    assert set(page.sections) == set(ids)
    assert page.rule_rows == {f"FR-{n:03d}" for n in range(1, 11)}
    for a in alerts:
        assert a["group_key"] in dom and a["window"]["start"] in dom

    # the checker notices a missing picture or section
    first = ids[0]
    start = html.index(f'data-alert-id="{first}"')
    cut = html[:start] + html[start:].replace("<svg", "<div", 1).replace("</svg>", "</div>", 1)
    assert missing_parts(outline(cut), ids) == [f"{first}: no timeline picture"]
    assert missing_parts(outline(html.replace(f'data-alert-id="{first}"', "")), ids) == [
        f"{first}: no section"
    ]

    shot = tmp_path / "report.png"
    browse(tmp_path, report, "--window-size=1280,4200", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 50_000  # a page with pictures, not a blank one
    ARTIFACT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACT)


def test_report_with_a_selection_and_no_alerts(tmp_path: Path, demo: tuple[Path, Path]) -> None:
    archive, accounts = demo
    report = tmp_path / "quiet.html"
    r = frwatch(
        "replay", "--accounts", accounts, "--account", "acct-uni", "--report", report, archive
    )
    assert r.code == 0, r.stderr
    assert r.lines == []
    html = report.read_text(encoding="utf-8")
    assert "No alert fired." in html
    assert "accounts acct-uni" in html
    assert outline(html).sections == {}


def test_report_escapes_what_the_archive_says(tmp_path: Path) -> None:
    # request metadata is attacker-controlled text: it must show as text, never as markup
    evil = '<script>alert("x")</script>'
    events: list[dict[str, Any]] = [
        {
            "event_id": "e1",
            "ts": DEFAULT_START_MS,
            "account_id": "acct-<b>x</b>",
            "operation": "face.identify",
            "model": evil,
            "image_count": 1,
        }
    ]
    archive = tmp_path / "requests.jsonl"
    archive.write_bytes(jsonl(events))
    report = tmp_path / "escaped.html"
    r = frwatch("replay", "--report", report, archive)
    assert r.code == 0, r.stderr
    html = report.read_text(encoding="utf-8")
    assert "<script" not in html and "<b>x" not in html
    assert "&lt;script&gt;" in html


@pytest.mark.parametrize("where", ["missing-dir/report.html", "."])
def test_a_report_that_cannot_be_written_fails_before_processing(
    tmp_path: Path, demo: tuple[Path, Path], where: str
) -> None:
    archive, _ = demo
    line = frwatch("replay", "--report", tmp_path / where, archive).one_line_error()
    assert "cannot write the report" in line
