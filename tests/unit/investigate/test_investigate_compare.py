"""`frwatch replay --compare-rules OLD` (SPEC 6): one pass, two rule sets, the difference per
rule, as the shadow check before `rules deploy`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from investigation_cli import frwatch, jsonl, latest, without_detection_time

import streams.core
from topics.alerts import alert_id

CATALOG = Path(streams.core.__file__).parent / "catalog.yaml"
HOUR = 3_600_000
T0 = 1_795_000_000_000 - 1_795_000_000_000 % HOUR  # 2026-11-18T11:00:00Z
#: distinct subjects each org identifies within the hour (FR-006 fires at distinct >= N)
SUBJECTS = {"org-a": 45, "org-b": 55, "org-c": 70}
ACCOUNTS = [
    {"account_id": f"acct-{org[-1]}{n}", "org_id": org, "sector": "commercial", "country": "DE"}
    for org in SUBJECTS
    for n in (1, 2)
]


def fr006(at_least: int) -> bytes:
    text = CATALOG.read_text()
    old = "{kind: distinct, field: subject_ids, at_least: 50}"
    assert text.count(old) == 1
    return text.replace(
        old, f"{{kind: distinct, field: subject_ids, at_least: {at_least}}}"
    ).encode()


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    events: list[dict[str, Any]] = []
    for org, n in SUBJECTS.items():
        for i in range(n):
            # the org's two accounts take turns: an org rule groups them
            events.append(
                {
                    "event_id": f"{org}-{i}",
                    "ts": T0 + 60_000 + i * 1000,
                    "account_id": f"acct-{org[-1]}{1 + i % 2}",
                    "operation": "face.identify",
                    "image_count": 1,
                    "subject_ids": [f"subj-{org}-{i}"],
                }
            )
    # a redelivery adds nothing under either rule set
    events.append(dict(events[0]))
    archive = tmp_path / "requests.jsonl"
    archive.write_bytes(jsonl(events))
    accounts = tmp_path / "accounts.jsonl"
    accounts.write_bytes(jsonl(ACCOUNTS))
    return archive, accounts


def _ids(*orgs: str) -> list[str]:
    return sorted(alert_id("FR-006", org, T0) for org in orgs)


def _by_rule(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["rule_id"]: d for d in lines}


@pytest.mark.parametrize(
    ("new_threshold", "only_old", "only_new", "both"),
    [
        (40, [], ["org-a"], ["org-b", "org-c"]),  # lowered: org-a is caught too
        (60, ["org-b"], [], ["org-c"]),  # raised: org-b no longer fires
    ],
)
def test_a_changed_fr006_threshold_gives_the_expected_difference(
    tmp_path: Path,
    inputs: tuple[Path, Path],
    new_threshold: int,
    only_old: list[str],
    only_new: list[str],
    both: list[str],
) -> None:
    archive, accounts = inputs
    new = tmp_path / "new.yaml"
    new.write_bytes(fr006(new_threshold))
    out = tmp_path / "alerts.jsonl"
    r = frwatch(
        "replay", "--accounts", accounts, "--rules", new, "--compare-rules", CATALOG, "--json",
        "--out", out, archive,
    )  # fmt: skip
    assert r.code == 0, r.stderr
    diffs = _by_rule(r.lines)
    assert set(diffs) == {f"FR-{n:03d}" for n in range(1, 11)}
    d = diffs["FR-006"]
    assert d["version_changed"] is True and d["in_old"] and d["in_new"]
    assert sorted(e["alert_id"] for e in d["only_old"]) == _ids(*only_old)
    assert sorted(e["alert_id"] for e in d["only_new"]) == _ids(*only_new)
    assert sorted(e["alert_id"] for e in d["both"]) == _ids(*both)
    assert sorted(e["group_key"] for e in d["only_new"]) == only_new
    for e in d["both"]:
        if "status" in e["new"]:  # the alert lifecycle: the last revision's final figures
            assert e["old"]["distinct"] == e["new"]["distinct"] == SUBJECTS[e["group_key"]]
            assert e["old"]["status"] == e["new"]["status"] == "closed"
        else:  # one alert per window, with the figures at firing
            assert e["old"]["distinct"] == 50
            assert e["new"]["distinct"] == new_threshold
    for rid, other in diffs.items():
        if rid != "FR-006":
            assert (other["only_old"], other["only_new"], other["both"]) == ([], [], []), rid
            assert other["version_changed"] is False

    # --out holds the new rules' alerts, the same as a plain replay under them
    plain = frwatch("replay", "--accounts", accounts, "--rules", new, archive)
    got = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert without_detection_time(got) == without_detection_time(plain.lines)
    assert sorted(latest(got)) == _ids(*only_new, *both)
    s = r.summary
    assert (s["events"], s["duplicates"], s["alerts"]) == (
        sum(SUBJECTS.values()) + 1,
        1,
        len(latest(got)),
    )

    table = frwatch(
        "replay", "--accounts", accounts, "--rules", new, "--compare-rules", CATALOG, archive
    )
    assert table.code == 0, table.stderr
    text = table.stdout.decode()
    row = next(line for line in text.splitlines() if line.startswith("FR-006 "))
    assert row.split()[1:4] == [str(len(only_old)), str(len(only_new)), str(len(both))]
    for org in only_old + only_new:
        assert org in text
    assert "no difference" not in text


def test_identical_rule_files_give_an_empty_difference(
    tmp_path: Path, inputs: tuple[Path, Path]
) -> None:
    archive, accounts = inputs
    copy = tmp_path / "copy.yaml"
    copy.write_bytes(CATALOG.read_bytes())
    r = frwatch(
        "replay", "--accounts", accounts, "--rules", copy, "--compare-rules", CATALOG, "--json",
        archive,
    )  # fmt: skip
    assert r.code == 0, r.stderr
    diffs = r.lines
    assert len(diffs) == 10
    assert all(d["only_old"] == [] and d["only_new"] == [] for d in diffs)
    assert sorted(e["alert_id"] for d in diffs for e in d["both"]) == _ids("org-b", "org-c")
    table = frwatch("replay", "--accounts", accounts, "--compare-rules", copy, archive)
    assert table.code == 0, table.stderr
    assert "no difference" in table.stdout.decode()


def test_a_rule_only_one_file_has(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    archive, accounts = inputs
    text = fr006(40).decode().replace("id: FR-006", "id: FR-106")
    new = tmp_path / "renamed.yaml"
    new.write_text(text)
    r = frwatch(
        "replay", "--accounts", accounts, "--rules", new, "--compare-rules", CATALOG, "--json",
        archive,
    )  # fmt: skip
    assert r.code == 0, r.stderr
    diffs = _by_rule(r.lines)
    assert diffs["FR-006"]["in_new"] is False
    assert sorted(e["alert_id"] for e in diffs["FR-006"]["only_old"]) == _ids("org-b", "org-c")
    assert diffs["FR-106"]["in_old"] is False
    assert sorted(e["group_key"] for e in diffs["FR-106"]["only_new"]) == [
        "org-a",
        "org-b",
        "org-c",
    ]


@pytest.mark.parametrize("content", [None, b"rules: [{id: FR-001}]\n"])
def test_an_unreadable_or_invalid_old_rules_file(
    tmp_path: Path, inputs: tuple[Path, Path], content: bytes | None
) -> None:
    archive, _ = inputs
    old = tmp_path / "old.yaml"
    if content is not None:
        old.write_bytes(content)
    line = frwatch("replay", "--compare-rules", old, archive).one_line_error()
    assert "--compare-rules" in line and str(old) in line
