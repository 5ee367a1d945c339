"""`frwatch exceptions add` and `replay --exceptions`: invalid input is one line and exit 2,
before anything reaches Kafka (no broker here: nothing may try one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.cli.exceptions_cmd import expiry_ms, listing, metrics_url, new_exception, scrape_hits
from streams.cli.main import build_parser, main
from streams.settings import settings_from_env
from topics.exceptions import parse_exception
from topics.timestamps import format_ms, parse_rfc3339_ms

ADD = ["exceptions", "add", "--rules", "FR-006", "--account", "acct-kyc", "--reason", "approved"]
NOWHERE = ["--broker", "127.0.0.1:1"]  # never reached: validation comes first
DAY = 86_400_000


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--owner", "", "--expires", "30d"], "field owner: owner must not be empty"),
        (["--owner", "soc", "--expires", "367d"],
         "field expires_at: expires_at may be at most 366 days after created_at"),
        (["--owner", "soc", "--expires", "2020-01-01T00:00:00Z"],
         "field expires_at: expires_at must be after created_at"),
        (["--owner", "soc", "--expires", "soon"], "--expires 'soon' is neither a duration"),
        (["--owner", "soc", "--expires", "30d", "--ticket", ""], "field ticket:"),
    ],
)  # fmt: skip
def test_add_refuses_invalid_input_in_one_line(
    capsys: pytest.CaptureFixture[str], extra: list[str], says: str
) -> None:
    code, out, err = run([*ADD, *extra, *NOWHERE], capsys)
    assert code == 2 and out == ""
    assert err.startswith("frwatch exceptions add: error: ") and says in err
    assert err.endswith("(nothing published)\n") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("match", "says"),
    [
        ("{not json", "--match is not JSON"),
        ('{"field": "acount_id", "equals": "x"}', "field match.field: unknown field 'acount_id'"),
        ('"acct-1"', "field match: a condition is a mapping"),
    ],
)
def test_add_refuses_an_invalid_match(
    capsys: pytest.CaptureFixture[str], match: str, says: str
) -> None:
    argv = ["exceptions", "add", "--rules", "*", "--match", match, "--reason", "r"]
    code, _, err = run([*argv, "--owner", "soc", "--expires", "1d", *NOWHERE], capsys)
    assert code == 2 and says in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [
        [*ADD, "--expires", "30d"],  # no owner
        [*ADD, "--owner", "soc"],  # no expiry
        [*ADD, "--org", "org-1", "--owner", "soc", "--expires", "30d"],  # two selectors
        ["exceptions", "add", "--rules", "FR-006", "--reason", "r", "--owner", "o",
         "--expires", "1d"],  # no selector
        ["exceptions", "remove"],
        ["exceptions", "purge"],
    ],
)  # fmt: skip
def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = run([*argv, *NOWHERE], capsys)
    assert code == 2 and err.count("\n") == 1


def test_the_record_add_builds() -> None:
    args = build_parser().parse_args(
        [*ADD[:3], "FR-006, FR-004", "--org", "org-1", "--reason", "r", "--owner", "o",
         "--expires", "90d", "--ticket", "LA-9"]
    )  # fmt: skip
    now = parse_rfc3339_ms("2026-12-04T02:00:00.123Z")
    x = new_exception(args, now)
    assert x.exception_id.startswith("EX-") and x.rules == ("FR-006", "FR-004")
    assert x.match == {"field": "account.org_id", "equals": "org-1"}
    assert (x.created_at_ms, x.expires_at_ms, x.ticket) == (now, now + 90 * DAY, "LA-9")
    assert expiry_ms("2027-01-01T00:00:00Z", now) == parse_rfc3339_ms("2027-01-01T00:00:00Z")


def test_list_says_active_or_expired_and_why_hits_are_unknown() -> None:
    now = parse_rfc3339_ms("2026-12-04T02:00:00Z")

    def rec(xid: str, created: int, expires: int) -> Any:
        return parse_exception(
            {"exception_id": xid, "rules": ["*"], "match": {"field": "account_id", "equals": "a"},
             "reason": "r", "owner": "o", "created_at": format_ms(created),
             "expires_at": format_ms(expires)}
        )  # fmt: skip

    found = {
        "EX-old": rec("EX-old", now - 9 * DAY, now - DAY),
        "EX-now": rec("EX-now", now, now + DAY),
    }
    entries = listing(found, now, {"EX-now": 3.0}, None)
    assert [(e["exception_id"], e["state"], e["hits"]) for e in entries] == [
        ("EX-old", "expired", 0),
        ("EX-now", "active", 3),
    ]
    unknown = listing(found, now, None, "no worker metrics at http://x")
    assert {e["hits"] for e in unknown} == {None}
    assert {e["hits_unknown"] for e in unknown} == {"no worker metrics at http://x"}
    # each entry is an exception record as it stands: a replay --exceptions line
    assert parse_exception(orjson.loads(orjson.dumps(entries[1]))) == found["EX-now"]


def test_hits_of_an_unreachable_worker_are_unknown_with_the_reason() -> None:
    settings = settings_from_env(overrides={"web_bind": "0.0.0.0", "web_port": "1"})
    url = metrics_url(settings)
    assert url == "http://127.0.0.1:1/metrics"
    hits, why = scrape_hits(url)
    assert hits is None and why is not None and why.startswith(f"no worker metrics at {url}")


def write(path: Path, lines: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    return path


def test_replay_applies_exceptions_and_refuses_an_invalid_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = parse_rfc3339_ms("2026-11-18T07:00:00Z")
    accounts = write(
        tmp_path / "accounts.jsonl",
        [{"account_id": "acct-pd", "sector": "law_enforcement", "country": "US"}],
    )
    events = write(
        tmp_path / "events.jsonl",
        [{"event_id": "e1", "ts": t0, "account_id": "acct-pd", "operation": "face.identify"}],
    )
    good = {
        "exception_id": "EX-pd", "rules": ["FR-001"],
        "match": {"field": "account_id", "equals": "acct-pd"}, "reason": "pilot", "owner": "soc",
        "created_at": format_ms(t0), "expires_at": format_ms(t0 + DAY),
    }  # fmt: skip
    base = ["replay", "--accounts", str(accounts), str(events)]
    code, out, err = run(base, capsys)
    assert code == 0 and "FR-001" in {orjson.loads(line)["rule_id"] for line in out.splitlines()}
    plain_summary = orjson.loads(err.splitlines()[-1])

    ex = write(tmp_path / "ex.jsonl", [good])
    code, out, err = run([*base, "--exceptions", str(ex)], capsys)
    assert code == 0
    assert "FR-001" not in {orjson.loads(line)["rule_id"] for line in out.splitlines()}
    assert set(orjson.loads(err.splitlines()[-1])) == set(plain_summary)  # summary unchanged

    bad = write(tmp_path / "bad.jsonl", [good, {**good, "expires_at": format_ms(t0 + 400 * DAY)}])
    code, out, err = run([*base, "--exceptions", str(bad)], capsys)
    assert code == 2 and out == ""
    assert err == (
        f"frwatch replay: error: {bad}:2: field expires_at: "
        "expires_at may be at most 366 days after created_at\n"
    )
    code, _, err = run([*base, "--exceptions", str(tmp_path / "missing.jsonl")], capsys)
    assert code == 2 and "missing.jsonl: cannot read" in err and err.count("\n") == 1
