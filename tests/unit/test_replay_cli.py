"""`frwatch replay` and `frwatch rules` through the real command line (SPEC 6), no Kafka."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

import streams
import streams.core
from streams.core.rules import load_rules
from streams.synthetic import DEFAULT_START_MS, SAMPLE_ACCOUNTS, SCENARIO_RULES, demo_traffic
from topics.alerts import ACCOUNT_FIELDS, SAMPLE_FIELDS, alert_id
from topics.timestamps import format_ms, parse_rfc3339_ms

CATALOG = Path(streams.core.__file__).parent / "catalog.yaml"
HOUR = 3_600_000
RFC3339_MS_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
SEVERITY = {
    "FR-001": "critical",
    "FR-002": "critical",
    "FR-003": "high",
    "FR-004": "high",
    "FR-005": "medium",
    "FR-006": "high",
    "FR-007": "high",
    "FR-008": "low",
    "FR-009": "high",
    "FR-010": "medium",
}
ALERT_KEYS = {
    "schema",
    "alert_id",
    "status",
    "revision",
    "rule_id",
    "title",
    "clause",
    "severity",
    "group_by",
    "group_key",
    "account",
    "window",
    "observed",
    "evidence",
    "related",
    "detected_at",
    "mode",
    "detector",
}


@dataclass
class Result:
    code: int
    stdout: bytes
    stderr: str

    @property
    def alerts(self) -> list[dict[str, Any]]:
        """The alerts: their open revisions (SPEC 5)."""
        return [a for a in self.revisions if a["status"] == "open"]

    @property
    def revisions(self) -> list[dict[str, Any]]:
        """Every line of the output: each revision of each alert."""
        return [orjson.loads(line) for line in self.stdout.splitlines()]

    @property
    def summary(self) -> dict[str, Any]:
        last = self.stderr.strip().splitlines()[-1]
        doc: dict[str, Any] = orjson.loads(last)
        return doc

    def one_line_error(self) -> str:
        """Exit 2 with exactly one line on stderr (returned)."""
        assert self.code == 2, (self.code, self.stderr)
        lines = self.stderr.strip("\n").splitlines()
        assert len(lines) == 1, self.stderr
        return lines[0]


def frwatch(*args: str | Path, stdin: bytes | None = None, cwd: Path | None = None) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRWATCH_")}
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli.main", *map(str, args)],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr.decode())


def jsonl(items: list[Any]) -> bytes:
    return b"".join(orjson.dumps(i) + b"\n" for i in items)


@pytest.fixture
def accounts(tmp_path: Path) -> Path:
    path = tmp_path / "accounts.jsonl"
    path.write_bytes(jsonl(list(SAMPLE_ACCOUNTS)))
    return path


@pytest.fixture
def demo_events() -> list[dict[str, Any]]:
    return list(demo_traffic(7, DEFAULT_START_MS, background_per_scenario=20))


@pytest.fixture
def archive(tmp_path: Path, demo_events: list[dict[str, Any]]) -> Path:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(demo_events))
    return path


def ids(result: Result) -> set[str]:
    return {a["alert_id"] for a in result.alerts}


# ----------------------------------------------------------------------------- the scenarios


def test_demo_archive_fires_each_rule_once_with_complete_alerts(
    archive: Path, accounts: Path, demo_events: list[dict[str, Any]]
) -> None:
    r = frwatch("replay", "--accounts", accounts, archive)
    assert r.code == 0, r.stderr
    alerts = r.alerts
    assert sorted(a["rule_id"] for a in alerts) == sorted(SCENARIO_RULES)
    assert {a["rule_id"]: a["group_key"] for a in alerts} == SCENARIO_RULES

    sha = hashlib.sha256(CATALOG.read_bytes()).hexdigest()
    hour = DEFAULT_START_MS - DEFAULT_START_MS % HOUR
    day = DEFAULT_START_MS - DEFAULT_START_MS % (24 * HOUR)
    by_account = {a["account_id"]: a for a in SAMPLE_ACCOUNTS}
    for a in alerts:
        rid = a["rule_id"]
        assert set(a) == ALERT_KEYS, rid
        assert a["schema"] == "frwatch.alert/v2"
        assert a["mode"] == "replay"
        assert a["severity"] == SEVERITY[rid]
        assert a["title"] and a["clause"]
        assert a["group_by"] == ("org_id" if rid == "FR-006" else "account_id")
        start = day if rid == "FR-007" else hour
        size = 24 * HOUR if rid == "FR-007" else HOUR
        assert a["window"] == {"start": format_ms(start), "end": format_ms(start + size)}
        assert a["alert_id"] == alert_id(rid, a["group_key"], start)
        assert re.fullmatch(r"[0-9a-f]{32}", a["alert_id"])
        assert set(a["account"]) == set(ACCOUNT_FIELDS)
        acct = by_account.get(a["account"]["account_id"])
        expected_account = {k: (acct or {}).get(k) for k in ACCOUNT_FIELDS}
        expected_account["account_id"] = a["account"]["account_id"]
        assert a["account"] == expected_account
        assert set(a["observed"]) == {"count", "distinct", "estimated"}
        assert a["observed"]["count"] >= 1
        samples = a["evidence"]["samples"]
        assert 1 <= len(samples) <= 10
        assert all(tuple(s) == SAMPLE_FIELDS for s in samples)
        sample_ts = sorted(parse_rfc3339_ms(s["ts"]) for s in samples)
        assert a["evidence"]["first_ts"] == format_ms(sample_ts[0])
        assert a["evidence"]["last_ts"] == format_ms(sample_ts[-1])
        for t in [a["detected_at"], a["evidence"]["first_ts"], *(s["ts"] for s in samples)]:
            assert RFC3339_MS_Z.match(t), t
        assert all(start <= t < start + size for t in sample_ts)
        assert a["detector"] == {
            "version": streams.__version__,
            "rules_sha256": sha,
            "rule_version": load_rules().by_id(a["rule_id"]).version,
        }
        assert b"subject_ids" not in orjson.dumps(a)
    got = {a["rule_id"]: a for a in alerts}
    assert got["FR-008"]["account"] == {k: None for k in ACCOUNT_FIELDS} | {
        "account_id": "acct-unknown-7"
    }
    assert got["FR-006"]["account"]["org_id"] == "org-retail"
    assert got["FR-006"]["observed"] == {"count": 50, "distinct": 50, "estimated": False}
    assert got["FR-005"]["observed"] == {"count": 3, "distinct": None, "estimated": False}
    assert got["FR-007"]["observed"] == {"count": 21, "distinct": None, "estimated": False}
    assert got["FR-001"]["observed"] == {"count": 1, "distinct": None, "estimated": False}

    summary = r.summary
    assert set(summary) == {
        "events",
        "malformed",
        "skipped",
        "selected",
        "duplicates",
        "alerts",
        "seconds",
    }
    assert summary["selected"] == len(demo_events)
    assert summary["events"] == len(demo_events)
    assert (summary["malformed"], summary["duplicates"], summary["alerts"]) == (0, 0, 10)
    assert isinstance(summary["seconds"], int | float) and summary["seconds"] >= 0
    assert len(r.stderr.strip().splitlines()) == 1


def test_without_accounts_every_face_user_is_unknown(archive: Path) -> None:
    r = frwatch("replay", archive)
    assert r.code == 0
    rules = {a["rule_id"] for a in r.alerts}
    assert "FR-008" in rules
    assert not rules & {"FR-001", "FR-002", "FR-006"}
    assert all(a["account"]["org_id"] is None for a in r.alerts)


def test_out_file(tmp_path: Path, archive: Path, accounts: Path) -> None:
    out = tmp_path / "alerts.jsonl"
    r = frwatch("replay", "--accounts", accounts, "--out", out, archive)
    assert r.code == 0
    assert r.stdout == b""
    revisions = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert sum(a["status"] == "open" for a in revisions) == 10
    assert r.summary["alerts"] == 10


def test_out_file_that_cannot_be_written(tmp_path: Path, archive: Path) -> None:
    line = frwatch("replay", "--out", tmp_path, archive).one_line_error()
    assert str(tmp_path) in line


def test_custom_rules_file_sha(tmp_path: Path, archive: Path, accounts: Path) -> None:
    rules = tmp_path / "rules.yaml"
    data = CATALOG.read_bytes().replace(b"at_least: 3}", b"at_least: 4}")
    rules.write_bytes(data)
    r = frwatch("replay", "--rules", rules, "--accounts", accounts, archive)
    assert r.code == 0
    assert {a["rule_id"] for a in r.alerts} == set(SCENARIO_RULES) - {"FR-005", "FR-010"}
    assert {a["detector"]["rules_sha256"] for a in r.alerts} == {hashlib.sha256(data).hexdigest()}


# ----------------------------------------------------------------------------- input forms


def test_gzip_and_stdin(
    tmp_path: Path, archive: Path, accounts: Path, demo_events: list[dict[str, Any]]
) -> None:
    expected = ids(frwatch("replay", "--accounts", accounts, archive))
    half = len(demo_events) // 2
    gz = tmp_path / "part1.jsonl.gz"
    gz.write_bytes(gzip.compress(jsonl(demo_events[:half])))
    rest = jsonl(demo_events[half:])
    r = frwatch("replay", "--accounts", accounts, gz, "-", stdin=rest)
    assert r.code == 0, r.stderr
    assert ids(r) == expected
    assert r.summary["events"] == len(demo_events)
    # gzip is recognised by its content, not its name
    disguised = tmp_path / "plain-name.jsonl"
    disguised.write_bytes(gzip.compress(jsonl(demo_events)))
    assert ids(frwatch("replay", "--accounts", accounts, disguised)) == expected
    # the whole archive on stdin
    r = frwatch("replay", "--accounts", accounts, "-", stdin=archive.read_bytes())
    assert ids(r) == expected


def test_stdin_named_twice(archive: Path) -> None:
    line = frwatch("replay", "-", "-").one_line_error()
    assert "stdin" in line


def test_crlf_and_blank_lines(
    tmp_path: Path, archive: Path, accounts: Path, demo_events: list[dict[str, Any]]
) -> None:
    expected = ids(frwatch("replay", "--accounts", accounts, archive))
    messy = tmp_path / "messy.jsonl"
    body = b"\r\n\n   \r\n".join(orjson.dumps(e) for e in demo_events)
    messy.write_bytes(b"\n\r\n" + body + b"\r\n\t\r\n")
    crlf_accounts = tmp_path / "accounts-crlf.jsonl"
    crlf_accounts.write_bytes(accounts.read_bytes().replace(b"\n", b"\r\n\r\n"))
    r = frwatch("replay", "--accounts", crlf_accounts, messy)
    assert r.code == 0, r.stderr
    assert ids(r) == expected
    assert r.summary["events"] == len(demo_events)
    assert r.summary["malformed"] == 0
    assert len(r.stderr.strip().splitlines()) == 1  # no warnings about blank account lines


def test_empty_archive(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    r = frwatch("replay", empty)
    assert r.code == 0
    assert r.stdout == b""
    assert r.summary | {"seconds": 0} == {
        "events": 0,
        "malformed": 0,
        "skipped": 0,
        "selected": 0,
        "duplicates": 0,
        "alerts": 0,
        "seconds": 0,
    }


GOOD = {"event_id": "g1", "ts": 1_795_000_000_000, "account_id": "a", "operation": "embeddings"}

# (line, records it holds, malformed among them)
MALFORMED_LINES: list[tuple[bytes, int, int]] = [
    (b"{not json", 1, 1),  # not_json
    (b'{"event_id": "x", "ts": NaN, "account_id": "a", "operation": "o"}', 1, 1),  # not_json
    (b"\xff\xfe garbage", 1, 1),  # not_json (not UTF-8)
    (b"[1, 2]", 1, 1),  # not_object
    (b'"a string"', 1, 1),  # not_object
    (b"42", 1, 1),  # not_object
    (b"null", 1, 1),  # not_object
    (b'{"ts": 1, "account_id": "a", "operation": "o"}', 1, 1),  # missing_field event_id
    (b'{"event_id": "x", "account_id": "a", "operation": "o"}', 1, 1),  # missing_field ts
    (b'{"event_id": "x", "ts": 1, "account_id": "a", "operation": null}', 1, 1),  # missing
    (b'{"event_id": "x", "ts": true, "account_id": "a", "operation": "o"}', 1, 1),  # wrong_type
    (b'{"event_id": 7, "ts": 1, "account_id": "a", "operation": "o"}', 1, 1),  # wrong_type
    (b'{"event_id": "x", "ts": 1, "account_id": "a", "operation": "o", "image_count": 1.0}', 1, 1),
    (b'{"event_id": "x", "ts": 1, "account_id": "a", "operation": "o", "subject_ids": "s"}', 1, 1),
    (b'{"event_id": "x", "ts": "2026-11-18T07:00:00", "account_id": "a", "operation": "o"}', 1, 1),
    (b'{"event_id": "x", "ts": 1, "account_id": "a", "operation": "o", "gallery": "g"}', 1, 1),
    (b'{"event_id": "x", "ts": -1, "account_id": "a", "operation": "o"}', 1, 1),  # out_of_range
    (b'{"event_id": "x", "ts": 253402300800000, "account_id": "a", "operation": "o"}', 1, 1),
    (b'{"event_id": "x", "ts": "2026-02-30T00:00:00Z", "account_id": "a", "operation": "o"}', 1, 1),
    (b'{"event_id": "x", "ts": 1, "account_id": "a", "operation": "o", "image_count": -1}', 1, 1),
    (b'{"event_id": "", "ts": 1, "account_id": "a", "operation": "o"}', 1, 1),
    (b'{"event_id": "' + b"x" * 129 + b'", "ts": 1, "account_id": "a", "operation": "o"}', 1, 1),
    (
        b'{"event_id": "x", "ts": 1, "account_id": "a", "operation": "o",'
        b' "intent": {"label": "none", "score": 1.5}}',
        1,
        1,
    ),
    (b'{"records": "nope"}', 1, 1),  # records not an array: one malformed record
    (b'{"records": []}', 0, 0),
    (orjson.dumps({"records": [GOOD, {"records": []}, 5]}), 3, 2),  # nested batch, not_object
    (orjson.dumps({"records": [GOOD, GOOD | {"event_id": "g2"}]}), 2, 0),
]


def test_malformed_lines_are_counted_not_fatal(
    tmp_path: Path, archive: Path, accounts: Path, demo_events: list[dict[str, Any]]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(line for line, _, _ in MALFORMED_LINES) + b"\n")
    r = frwatch("replay", "--accounts", accounts, bad, archive)
    assert r.code == 0, r.stderr
    assert len(r.alerts) == 10
    s = r.summary
    assert s["events"] == len(demo_events) + sum(n for _, n, _ in MALFORMED_LINES)
    assert s["malformed"] == sum(m for _, _, m in MALFORMED_LINES)
    assert s["alerts"] == 10


def test_duplicates_are_counted(tmp_path: Path) -> None:
    ev = {
        "ts": "2026-11-18T07:10:00Z",
        "account_id": "acct-v",
        "operation": "chat.completions",
        "image_count": 1,
        "intent": {"label": "identify_person", "score": 0.9},
    }
    lines = [ev | {"event_id": "a"}, ev | {"event_id": "b"}, ev | {"event_id": "a"}]
    lines += [{"records": [ev | {"event_id": "b", "model": "changed"}, ev | {"event_id": "c"}]}]
    path = tmp_path / "dups.jsonl"
    path.write_bytes(jsonl(lines))
    r = frwatch("replay", path)
    assert r.code == 0
    assert sorted(a["rule_id"] for a in r.alerts) == ["FR-005", "FR-008"]
    fr005 = next(a for a in r.alerts if a["rule_id"] == "FR-005")
    assert fr005["observed"]["count"] == 3
    assert r.summary | {"seconds": 0} == {
        "events": 5,
        "malformed": 0,
        "skipped": 0,
        "selected": 5,
        "duplicates": 2,
        "alerts": 2,
        "seconds": 0,
    }


# ----------------------------------------------------------------------------- bad inputs


def test_missing_archive(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    r = frwatch("replay", missing)
    line = r.one_line_error()
    assert str(missing) in line
    assert r.stdout == b""


def test_a_missing_second_archive_means_no_output(
    tmp_path: Path, archive: Path, accounts: Path
) -> None:
    missing = tmp_path / "second.jsonl"
    r = frwatch("replay", "--accounts", accounts, archive, missing)
    assert str(missing) in r.one_line_error()
    assert r.stdout == b""
    out = tmp_path / "out.jsonl"
    r = frwatch("replay", "--accounts", accounts, "--out", out, archive, missing)
    assert r.code == 2
    assert not out.exists() or out.read_bytes() == b""


def test_corrupt_gzip_second_archive_is_found_before_any_output(
    tmp_path: Path, archive: Path, accounts: Path
) -> None:
    """SPEC 6: all inputs are checked before processing starts.

    A second archive with the gzip magic bytes and a broken header is only read, and refused,
    after the first archive's alerts have been written.
    """
    bad = tmp_path / "broken.jsonl.gz"
    bad.write_bytes(b"\x1f\x8bnot really gzip at all")
    r = frwatch("replay", "--accounts", accounts, archive, bad)
    assert str(bad) in r.one_line_error()
    assert r.stdout == b"", f"{len(r.alerts)} alerts written before the bad archive was refused"


def test_archive_that_is_a_directory(tmp_path: Path) -> None:
    assert str(tmp_path) in frwatch("replay", tmp_path).one_line_error()


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_accounts_file(tmp_path: Path, archive: Path, kind: str) -> None:
    path = tmp_path / "accounts-missing.jsonl" if kind == "missing" else tmp_path
    r = frwatch("replay", "--accounts", path, archive)
    assert str(path) in r.one_line_error()
    assert r.stdout == b""


def test_invalid_rules_file(tmp_path: Path, archive: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_bytes(CATALOG.read_bytes().replace(b"window: 24h", b"window: 1 day"))
    r = frwatch("replay", "--rules", rules, archive)
    line = r.one_line_error()
    assert str(rules) in line
    assert "FR-007" in line
    assert "window" in line
    assert r.stdout == b""


def test_invalid_rules_file_from_the_environment(tmp_path: Path, archive: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_bytes(b"version: 2\nrules: []\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRWATCH_")}
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli.main", "replay", str(archive)],
        capture_output=True,
        env=env | {"FRWATCH_RULES": str(rules)},
        timeout=120,
        check=False,
    )
    r = Result(proc.returncode, proc.stdout, proc.stderr.decode())
    line = r.one_line_error()
    assert str(rules) in line and "version" in line


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "--bogus", "x.jsonl"],
        ["replay"],
        ["replay", "--accounts"],
        ["nonsense"],
        ["rules"],
        ["rules", "check"],
        [],
    ],
    ids=[
        "bad_flag",
        "no_archive",
        "flag_without_value",
        "unknown_command",
        "no_action",
        "no_file",
        "nothing",
    ],
)
def test_bad_usage_is_one_line_and_exit_2(args: list[str]) -> None:
    r = frwatch(*args)
    r.one_line_error()
    assert r.stdout == b""


def test_invalid_account_lines_are_warned_about_and_skipped(tmp_path: Path, archive: Path) -> None:
    records = [dict(a) for a in SAMPLE_ACCOUNTS]
    metro = next(a for a in records if a["account_id"] == "acct-metro-pd")
    metro["country"] = "usa"  # invalid: the line is skipped, so acct-metro-pd is unknown
    lines = jsonl(records) + b"{broken\n" + b"[1]\n" + orjson.dumps({"org_id": "o"}) + b"\n"
    path = tmp_path / "accounts.jsonl"
    path.write_bytes(lines)
    r = frwatch("replay", "--accounts", path, archive)
    assert r.code == 0, r.stderr
    warnings = r.stderr.strip().splitlines()[:-1]
    assert len(warnings) == 4, r.stderr
    metro_line = [a["account_id"] for a in records].index("acct-metro-pd") + 1
    assert warnings[0].startswith(f"{path}:{metro_line}: ")
    assert "country" in warnings[0]
    n = len(records)
    for k, w in enumerate(warnings[1:], start=n + 1):
        assert w.startswith(f"{path}:{k}: "), w
    assert r.summary["alerts"] == len(r.alerts)
    fired = {(a["rule_id"], a["group_key"]) for a in r.alerts}
    assert ("FR-001", "acct-metro-pd") not in fired
    assert ("FR-008", "acct-metro-pd") in fired
    assert ("FR-002", "acct-county-patrol") in fired


def test_account_warning_names_the_physical_line(tmp_path: Path, archive: Path) -> None:
    """The warning's line number counts blank lines too, so that `FILE:N` leads to the line."""
    path = tmp_path / "accounts.jsonl"
    path.write_bytes(b"\n" + jsonl(list(SAMPLE_ACCOUNTS[:2])) + b"\r\n\r\n{broken\r\n")
    r = frwatch("replay", "--accounts", path, archive)
    assert r.code == 0
    (warning,) = r.stderr.strip().splitlines()[:-1]
    physical = path.read_bytes().split(b"\n").index(b"{broken\r") + 1
    assert warning.startswith(f"{path}:{physical}: "), warning


def test_a_deleted_account_is_unknown(tmp_path: Path, archive: Path) -> None:
    path = tmp_path / "accounts.jsonl"
    path.write_bytes(jsonl([*SAMPLE_ACCOUNTS, {"account_id": "acct-bailbonds", "deleted": True}]))
    fired = {
        (a["rule_id"], a["group_key"])
        for a in frwatch("replay", "--accounts", path, archive).alerts
    }
    assert ("FR-004", "acct-bailbonds") in fired
    assert ("FR-008", "acct-bailbonds") in fired


# ----------------------------------------------------------------------------- frwatch rules


def test_rules_check_ok() -> None:
    r = frwatch("rules", "check", CATALOG)
    assert r.code == 0, r.stderr
    out = r.stdout.decode()
    assert "10 rules" in out
    assert hashlib.sha256(CATALOG.read_bytes()).hexdigest() in out


@pytest.mark.parametrize(
    ("content", "names"),
    [
        (b"version: 1\nrules: [\n", []),
        (
            CATALOG.read_bytes().replace(b"severity: low", b"severity: minor"),
            ["FR-008", "severity"],
        ),
        (
            CATALOG.read_bytes().replace(b"{field: account.country", b"{field: account.nation"),
            ["FR-001", "match.all[2].field"],
        ),
    ],
    ids=["bad_yaml", "bad_severity", "unknown_field"],
)
def test_rules_check_invalid(tmp_path: Path, content: bytes, names: list[str]) -> None:
    path = tmp_path / "rules.yaml"
    path.write_bytes(content)
    line = frwatch("rules", "check", path).one_line_error()
    assert str(path) in line
    for name in names:
        assert name in line


def test_rules_check_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert str(path) in frwatch("rules", "check", path).one_line_error()


def test_rules_show() -> None:
    r = frwatch("rules", "show")
    assert r.code == 0
    text = r.stdout.decode()
    for rid in SCENARIO_RULES:
        assert rid in text
    r = frwatch("rules", "show", "--json")
    docs = [orjson.loads(line) for line in r.stdout.splitlines()]
    assert [d["id"] for d in docs] == sorted(SCENARIO_RULES)
    fr007 = next(d for d in docs if d["id"] == "FR-007")
    assert fr007["window"] == "1d"
    assert fr007["group_by"] == "account_id"


def test_rules_check_reports_every_error_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "my-rules.yaml"
    data = (
        CATALOG.read_bytes()
        .replace(b"intent_threshold: 0.8", b"intent_threshold: 80")
        .replace(b"        - Face_Group ", b"        - Face_Identify ")
        .replace(b"severity: low", b"severity: minor")
    )
    path.write_bytes(data)
    r = frwatch("rules", "check", path)
    assert r.code == 2
    lines = r.stderr.strip("\n").splitlines()
    assert len(lines) == 3, r.stderr
    assert all(line.startswith(f"frwatch rules check: error: {path}: ") for line in lines)
    assert "field classification.operations[6].names[3]: operation 'Face_Identify'" in lines[0]
    assert "field classification.intent_threshold" in lines[1]
    assert "rule FR-008: field severity" in lines[2]
