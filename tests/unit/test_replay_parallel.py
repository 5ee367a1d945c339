"""`frwatch replay --workers N` (SPEC 6): the alerts and summary of one process."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.realistic_traffic import write_realistic_archive
from streams.replay_parallel import shard_of
from topics.timestamps import format_ms, parse_rfc3339_ms

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_795_000_000_000 - 1_795_000_000_000 % HOUR


def _replay(*args: str, stdin: bytes | None = None) -> tuple[int, list[dict[str, Any]], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli.main", "replay", *args],
        input=stdin,
        capture_output=True,
        timeout=300,
    )
    alerts = [orjson.loads(line) for line in proc.stdout.splitlines()]
    return proc.returncode, alerts, proc.stderr.decode()


def _summary(stderr: str) -> dict[str, Any]:
    summary = orjson.loads(stderr.strip().splitlines()[-1])
    summary.pop("seconds")
    return summary  # type: ignore[no-any-return]


def _comparable(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in a.items() if k != "detected_at"} for a in alerts]


@pytest.fixture(scope="module")
def realistic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    tmp = tmp_path_factory.mktemp("realistic")
    archive, accounts = tmp / "real.jsonl", tmp / "accounts.jsonl"
    traffic = write_realistic_archive(str(archive), str(accounts), 100_000, seed=5)
    return archive, accounts, traffic


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_give_the_alerts_and_summary_of_one_process(
    realistic: tuple[Path, Path, Any], workers: int
) -> None:
    archive, accounts, traffic = realistic
    code1, one, err1 = _replay("--accounts", str(accounts), str(archive))
    code, many, err = _replay("--workers", str(workers), "--accounts", str(accounts), str(archive))
    assert code1 == code == 0, err
    # the archive is what the test needs: org alerts whose accounts spread over every shard
    org_of = {a["account_id"]: a["org_id"] for a in traffic.fleet.accounts}
    org_alerts = {a["group_key"] for a in one if a["group_by"] == "org_id"}
    assert len(org_alerts) >= 3
    spread = [
        {shard_of(acc, workers) for acc, o in org_of.items() if o == org} for org in org_alerts
    ]
    assert all(len(shards) > 1 for shards in spread)
    assert set(range(workers)) in spread
    assert len({a["rule_id"] for a in one}) >= 8
    summary = _summary(err1)
    assert summary["duplicates"] > 0 and summary["malformed"] > 0
    # the same alerts, in the same order, and the same counts
    assert _comparable(many) == _comparable(one)
    assert _summary(err) == summary


def _event(event_id: str, account: str, ts: int, **extra: Any) -> bytes:
    return orjson.dumps(
        {"event_id": event_id, "ts": ts, "account_id": account, "operation": "face.identify"}
        | extra
    )


def test_the_retention_clock_of_one_process_moves_every_shard(tmp_path: Path) -> None:
    """A shard's states expire with every record's event time, not only its own records'.

    acct-a's window is dropped once other accounts' records move the clock a day past it;
    then a redelivery of its event starts the window afresh and fires again (SPEC 4.1).
    """
    accounts = tmp_path / "accounts.jsonl"
    names = [f"acct-{i}" for i in range(8)]
    accounts.write_bytes(
        b"\n".join(
            orjson.dumps(
                {"account_id": n, "org_id": "org-x", "sector": "law_enforcement", "country": "US"}
            )
            for n in names
        )
    )
    other = next(n for n in names if shard_of(n, 2) != shard_of("acct-0", 2))
    lines = [
        _event("e-1", "acct-0", T0 + 10),
        _event("e-2", other, T0 + HOUR + DAY + 60_000),  # the clock passes acct-0's window
        _event("e-1", "acct-0", T0 + 10),  # a redelivery: its window is gone, so it counts
        b"not json",
    ]
    archive = tmp_path / "late.jsonl"
    archive.write_bytes(b"\n".join(lines) + b"\n")
    code1, one, err1 = _replay("--accounts", str(accounts), str(archive))
    code2, two, err2 = _replay("--workers", "2", "--accounts", str(accounts), str(archive))
    assert code1 == code2 == 0
    fr001 = [
        a["alert_id"]
        for a in one
        if a["rule_id"] == "FR-001" and a["group_key"] == "acct-0" and a["status"] == "open"
    ]
    assert len(fr001) == 2 and fr001[0] == fr001[1]  # opened twice (closed after each)
    assert _comparable(two) == _comparable(one)
    assert (
        _summary(err2)
        == _summary(err1)
        == {
            "events": 4,
            "malformed": 1,
            "skipped": 0,
            "duplicates": 1,  # FR-007's 24h window still holds e-1
            "alerts": sum(a["status"] == "open" for a in one),
            "selected": 3,  # every valid record: no selection
        }
    )


def test_gzip_stdin_and_several_files(tmp_path: Path, realistic: tuple[Path, Path, Any]) -> None:
    archive, accounts, _ = realistic
    data = archive.read_bytes().splitlines(keepends=True)
    half = len(data) // 2
    first, second = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl"
    first.write_bytes(gzip.compress(b"".join(data[:half])))
    # CRLF line ends, blank lines and no final line end
    second.write_bytes(b"\r\n".join(line.rstrip(b"\n") for line in data[half:]) + b"\r\n\r\n  ")
    _, one, err1 = _replay("--accounts", str(accounts), str(archive))
    code, many, err = _replay(
        "--workers", "2", "--accounts", str(accounts), str(first), "-", stdin=second.read_bytes()
    )
    assert code == 0, err
    assert _comparable(many) == _comparable(one)
    assert _summary(err) == _summary(err1)


def test_inputs_are_checked_before_any_worker_starts(
    tmp_path: Path, realistic: tuple[Path, Path, Any]
) -> None:
    archive, _, _ = realistic
    code, alerts, err = _replay("--workers", "2", str(archive), str(tmp_path / "missing.jsonl"))
    assert (code, alerts) == (2, [])
    assert err.count("\n") == 1 and "missing.jsonl" in err


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_workers_must_be_a_positive_number(realistic: tuple[Path, Path, Any], value: str) -> None:
    code, alerts, err = _replay("--workers", value, str(realistic[0]))
    assert (code, alerts) == (2, [])
    assert err.count("\n") == 1


def test_workers_apply_the_exceptions_of_one_process(
    realistic: tuple[Path, Path, Any], tmp_path: Path
) -> None:
    """`--exceptions` reaches every shard: an org's account excepted from its org rule (FR-006)
    and an account from every rule give the alerts of one process, fewer than without."""
    archive, accounts, _ = realistic
    _, plain, err = _replay("--accounts", str(accounts), str(archive))
    assert _summary(err)["alerts"] > 0
    org_alert = next(a for a in plain if a["group_by"] == "org_id")
    acct_alert = next(a for a in plain if a["group_by"] == "account_id")
    first = "1970-01-01T00:00:00.000Z"  # set below
    excepted = [
        {
            "exception_id": "EX-org",
            "rules": [org_alert["rule_id"]],
            "match": {"field": "account.org_id", "equals": org_alert["group_key"]},
            "reason": "approved", "owner": "soc", "created_at": first, "expires_at": first,
        },
        {
            "exception_id": "EX-acct",
            "rules": ["*"],
            "match": {"field": "account_id", "equals": acct_alert["group_key"]},
            "reason": "approved", "owner": "soc", "created_at": first, "expires_at": first,
        },
    ]  # fmt: skip
    # valid over the archive's whole time (expires_at at most 366 days after created_at)
    starts = sorted(parse_rfc3339_ms(a["window"]["start"]) for a in plain)
    assert starts[-1] - starts[0] < 300 * DAY
    for ex in excepted:
        ex["created_at"] = format_ms(starts[0] - DAY)
        ex["expires_at"] = format_ms(starts[0] + 300 * DAY)
    exceptions = tmp_path / "exceptions.jsonl"
    exceptions.write_bytes(b"\n".join(orjson.dumps(e) for e in excepted) + b"\n")
    base = ["--accounts", str(accounts), "--exceptions", str(exceptions), str(archive)]
    code1, one, err1 = _replay(*base)
    code2, two, err2 = _replay("--workers", "2", *base)
    assert code1 == code2 == 0, err1 + err2
    assert _comparable(two) == _comparable(one)
    assert _summary(err2) == _summary(err1)
    kept = {(a["rule_id"], a["group_key"]) for a in one}
    assert (org_alert["rule_id"], org_alert["group_key"]) not in kept
    assert not any(a["group_key"] == acct_alert["group_key"] for a in one)
    assert len(one) < len(plain)
