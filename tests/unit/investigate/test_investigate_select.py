"""`frwatch replay --since/--until/--account/--org` (SPEC 6): a selection equals replaying a
file that holds only the selected records."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from investigation_cli import frwatch, jsonl, latest, without_detection_time, write_accounts

from streams.investigate.select import Selection, SelectionError, parse_selection
from streams.synthetic import DEFAULT_START_MS, SAMPLE_ACCOUNTS, demo_traffic
from topics.accounts import AccountRecord
from topics.requests import RequestEvent
from topics.timestamps import format_ms, parse_rfc3339_ms

HOUR = 3_600_000
H0 = DEFAULT_START_MS - DEFAULT_START_MS % HOUR
ORG_OF = {a["account_id"]: a.get("org_id") for a in SAMPLE_ACCOUNTS}


def _ts(line: bytes) -> int | None:
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(rec, dict):
        return None
    ts = rec.get("ts")
    if isinstance(ts, int):
        return ts
    return parse_rfc3339_ms(ts) if isinstance(ts, str) else None


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """The demo's violations in three hours 5h apart, some ts as RFC 3339, plus junk lines."""
    events: list[dict[str, Any]] = []
    for i, start in enumerate(
        (DEFAULT_START_MS, DEFAULT_START_MS + 5 * HOUR, DEFAULT_START_MS + 10 * HOUR)
    ):
        batch = list(demo_traffic(7 + i, start, background_per_scenario=10))
        for n, e in enumerate(batch):
            e["event_id"] = f"h{i}-{e['event_id']}"
            if n % 3 == 0:
                e["ts"] = format_ms(e["ts"]).replace("Z", "+00:00")
        events += batch
    lines = jsonl(events).splitlines(keepends=True)
    # records of a batch are selected one by one (SPEC 2): a batch of 40 records of all
    # kinds, each of whose records the prefiltered file holds on its own line if selected
    batch = [orjson.loads(line) for line in lines[100:140]]
    lines[100:140] = [orjson.dumps({"records": batch}) + b"\n"]
    lines[5:5] = [b"not json\n", b'{"event_id": "x"}\n']
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"".join(lines))
    return path


SELECTIONS: dict[str, tuple[list[str], Callable[[str, int], bool]]] = {
    "since": (["--since", format_ms(H0 + 5 * HOUR)], lambda a, t: t >= H0 + 5 * HOUR),
    "until mid-hour, with an offset": (
        ["--until", "2026-11-18T12:35:00+01:00"],
        lambda a, t: t < H0 + 35 * 60_000,
    ),
    "since and until": (
        ["--since", format_ms(H0 + 4 * HOUR), "--until", format_ms(H0 + 6 * HOUR)],
        lambda a, t: H0 + 4 * HOUR <= t < H0 + 6 * HOUR,
    ),
    "two accounts": (
        ["--account", "acct-metro-pd", "--account", "acct-gallery"],
        lambda a, t: a in ("acct-metro-pd", "acct-gallery"),
    ),
    "an org rule's org": (["--org", "org-retail"], lambda a, t: ORG_OF.get(a) == "org-retail"),
    "org or account, in a time range": (
        ["--org", "org-retail", "--account", "acct-unknown-7", "--since", format_ms(H0 + 5 * HOUR)],
        lambda a, t: (
            (ORG_OF.get(a) == "org-retail" or a == "acct-unknown-7") and t >= H0 + 5 * HOUR
        ),
    ),
}


@pytest.mark.parametrize("name", list(SELECTIONS))
def test_selection_equals_replaying_a_prefiltered_file(
    tmp_path: Path, archive: Path, name: str
) -> None:
    flags, keep = SELECTIONS[name]
    accounts = write_accounts(tmp_path / "accounts.jsonl")
    lines = archive.read_bytes().splitlines(keepends=True)
    records = []
    for line in lines:
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            records.append(line)
            continue
        if isinstance(doc, dict) and "records" in doc:
            records += [orjson.dumps(r) + b"\n" for r in doc["records"]]
        else:
            records.append(line)
    kept = []
    for line in records:
        ts = _ts(line)
        if ts is None:
            continue
        rec = orjson.loads(line)
        if "account_id" in rec and keep(rec["account_id"], ts):
            kept.append(line)
    prefiltered = tmp_path / "prefiltered.jsonl"
    prefiltered.write_bytes(b"".join(kept))

    selected = frwatch("replay", "--accounts", accounts, *flags, archive)
    assert selected.code == 0, selected.stderr
    expected = frwatch("replay", "--accounts", accounts, prefiltered)
    assert expected.code == 0, expected.stderr
    assert expected.lines, "a selection test needs alerts to compare"
    assert without_detection_time(selected.lines) == without_detection_time(expected.lines)

    everything = frwatch("replay", "--accounts", accounts, archive)
    assert len(selected.lines) < len(everything.lines)
    s = selected.summary
    assert set(s) == set(everything.summary)
    assert "selected" in s
    assert s["events"] == len(records) == everything.summary["events"]
    assert len(records) == len(lines) + 39
    assert s["malformed"] == 2
    assert s["selected"] == len(kept) == expected.summary["selected"]
    assert s["alerts"] == len(latest(selected.lines))


def test_without_a_selection_every_valid_record_is_selected(archive: Path) -> None:
    r = frwatch("replay", archive)
    assert r.code == 0, r.stderr
    s = r.summary
    assert s["selected"] == s["events"] - s["malformed"] - s["skipped"] > 0


def test_an_org_selects_nothing_without_the_accounts_file(archive: Path) -> None:
    # events carry no org (SPEC 2.1): the accounts file says which accounts an org has
    r = frwatch("replay", "--org", "org-retail", archive)
    assert r.code == 0, r.stderr
    assert r.lines == []
    assert r.summary["selected"] == 0


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["--since", "yesterday"], "--since"),
        (["--until", "2026-11-18T07:00:00"], "--until"),  # no offset
        (["--since", "2026-11-18T08:00:00Z", "--until", "2026-11-18T08:00:00Z"], "--until"),
        (["--since", "2026-11-18T09:00:00Z", "--until", "2026-11-18T08:00:00Z"], "--until"),
        (["--account", ""], "--account"),
        (["--org", " "], "--org"),
        (["--json"], "--json"),
    ],
)
def test_bad_selection_values_are_one_line_and_exit_2(
    archive: Path, flags: list[str], names: str
) -> None:
    line = frwatch("replay", *flags, archive).one_line_error()
    assert names in line


def test_selection_admits_by_time_account_and_org() -> None:
    sel = parse_selection(
        "2026-11-18T07:00:00Z", "2026-11-18T08:00:00.000+00:00", ["a1"], ["org-x"]
    )
    t0 = parse_rfc3339_ms("2026-11-18T07:00:00Z")
    ev = RequestEvent("e", t0, "a1", "face.identify")
    other = AccountRecord("a2", org_id="org-x")
    assert sel.admits(ev, None)
    assert sel.admits(ev._replace(account_id="a2"), other)
    assert not sel.admits(ev._replace(account_id="a3"), AccountRecord("a3", org_id="org-y"))
    assert not sel.admits(ev._replace(account_id="a3"), None)
    assert not sel.admits(ev._replace(ts_ms=t0 - 1), None)
    assert sel.admits(ev._replace(ts_ms=t0 + HOUR - 1), None)
    assert not sel.admits(ev._replace(ts_ms=t0 + HOUR), None)  # until is exclusive
    assert sel.narrows and not Selection().narrows
    with pytest.raises(SelectionError, match="--until"):
        Selection(since_ms=5, until_ms=5)
