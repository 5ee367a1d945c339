"""`frwatch publish` message building (SPEC 6) and the command line's help and usage errors.

No Kafka: `archive_messages` is what `publish` sends, in order; the command line is run as a
real process for --help, unknown commands and flags, and invalid settings.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.archive import ArchiveError
from streams.cli.ops import archive_messages
from streams.settings import SETTINGS, settings_from_env
from topics.requests import decode_request_message, is_batch

REPO = Path(__file__).resolve().parents[3]


def rec(i: int, account: str = "acct-a") -> dict[str, Any]:
    return {
        "event_id": f"e-{i}",
        "ts": 1_795_000_000_000 + i,
        "account_id": account,
        "operation": "face.verify",
    }


def write(path: Path, lines: list[Any], eol: bytes = b"\n") -> str:
    with open(path, "wb") as fh:
        for line in lines:
            fh.write((line if isinstance(line, bytes) else orjson.dumps(line)) + eol)
    return str(path)


def messages(paths: list[str], batch: int | None) -> list[tuple[bytes | None, bytes | None]]:
    return list(archive_messages(paths, batch))


def records_of(value: bytes | None) -> list[Any]:
    """The records of one batch envelope (asserting it is one)."""
    assert value is not None
    doc = orjson.loads(value)
    assert isinstance(doc, dict) and is_batch(doc) and set(doc) == {"records"}, value
    records: list[Any] = doc["records"]
    return records


# --- without --batch: each line as it is ----------------------------------------------------

MALFORMED_LINES = [
    b"this is not json",
    b"[1, 2, 3]",
    b'"just a string"',
    b'{"ts": 1, "account_id": "acct-nokey-missing-id", "operation": "x"}',
    b'{"event_id": "bad-2", "ts": true, "account_id": "acct-b", "operation": "face.identify"}',
    b'{"event_id": "bad-3", "account_id": 42}',
    b'{"records": "nope"}',
    b'{"records": [{"event_id": "bad-4"}, 7]}',
    b'{"event_id":  "spaced" ,  "ts" : 1,"account_id":"acct-c","operation":"o",  "z": NaN}',
]


def test_without_batch_each_line_is_sent_as_is_keyed_by_its_account(tmp_path: Path) -> None:
    good = [rec(1, "acct-a"), rec(2, "acct-b")]
    batch_line = {"records": [rec(3, "acct-c"), rec(4, "acct-d")]}
    lines: list[Any] = [good[0], *MALFORMED_LINES, batch_line, good[1]]
    path = write(tmp_path / "a.jsonl", lines)
    got = messages([path], None)
    assert [v for _, v in got] == [
        line if isinstance(line, bytes) else orjson.dumps(line) for line in lines
    ]
    keys = [k for k, _ in got]
    assert keys[0] == b"acct-a" and keys[-1] == b"acct-b"
    by_line = dict(zip(MALFORMED_LINES, keys[1:-2], strict=True))
    # malformed lines are sent too; keyed where they carry a string account_id
    assert by_line[b"this is not json"] is None
    assert by_line[b"[1, 2, 3]"] is None
    assert by_line[b'"just a string"'] is None
    assert by_line[MALFORMED_LINES[3]] == b"acct-nokey-missing-id"
    assert by_line[MALFORMED_LINES[4]] == b"acct-b"
    assert by_line[MALFORMED_LINES[5]] is None  # account_id is not a string
    assert by_line[b'{"records": "nope"}'] is None
    assert keys[-2] is None  # a batch has no single account


def test_without_batch_blank_lines_are_skipped_and_crlf_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(orjson.dumps(rec(1)) + b"\r\n\r\n   \r\n" + orjson.dumps(rec(2)) + b"\r\n")
    got = messages([str(path)], None)
    assert got == [(b"acct-a", orjson.dumps(rec(1))), (b"acct-a", orjson.dumps(rec(2)))]


def test_gzip_archives_are_read(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(orjson.dumps(rec(i)) + b"\n" for i in range(5))))
    assert [v for _, v in messages([str(path)], None)] == [orjson.dumps(rec(i)) for i in range(5)]
    (value,) = [v for _, v in messages([str(path)], 10)]
    assert records_of(value) == [rec(i) for i in range(5)]


def test_a_missing_archive_fails_before_anything_is_sent(tmp_path: Path) -> None:
    good = write(tmp_path / "good.jsonl", [rec(1)])
    gen = archive_messages([good, str(tmp_path / "missing.jsonl")], None)
    with pytest.raises(ArchiveError, match=r"missing\.jsonl"):
        next(gen)


# --- with --batch K -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "k", "sizes"), [(20, 7, [7, 7, 6]), (21, 7, [7, 7, 7]), (3, 1, [1, 1, 1]), (2, 50, [2])]
)
def test_batch_sends_k_records_per_envelope_and_flushes_the_rest(
    tmp_path: Path, n: int, k: int, sizes: list[int]
) -> None:
    path = write(tmp_path / "a.jsonl", [rec(i, f"acct-{i % 3}") for i in range(n)])
    got = messages([path], k)
    assert [len(records_of(v)) for _, v in got] == sizes
    assert [r for _, v in got for r in records_of(v)] == [rec(i, f"acct-{i % 3}") for i in range(n)]
    assert all(key is None for key, _ in got)  # a batch of mixed accounts has no key


def test_batch_lines_are_split_into_their_records_first(tmp_path: Path) -> None:
    lines: list[Any] = [
        rec(0),
        {"records": [rec(1), rec(2), rec(3), rec(4)]},
        {"records": []},
        rec(5),
        {"records": [rec(6)]},
    ]
    got = messages([write(tmp_path / "a.jsonl", lines)], 3)
    assert [records_of(v) for _, v in got] == [
        [rec(0), rec(1), rec(2)],
        [rec(3), rec(4), rec(5)],
        [rec(6)],
    ]


def test_records_keep_their_position_and_malformed_records_stay_records(tmp_path: Path) -> None:
    lines: list[Any] = [
        rec(0),
        {"event_id": "bad-ts", "ts": True, "account_id": "acct-a", "operation": "o"},
        {"records": [7, {"event_id": "no-ts"}, rec(1)]},
    ]
    got = messages([write(tmp_path / "a.jsonl", lines)], 10)
    (value,) = [v for _, v in got]
    assert records_of(value) == [lines[0], lines[1], 7, {"event_id": "no-ts"}, rec(1)]
    # the worker sees the same records, valid and malformed, as without --batch
    decoded = decode_request_message(value)
    assert len(decoded) == 5
    assert [type(d).__name__ for d in decoded] == [
        "RequestEvent",
        "RejectedRecord",
        "RejectedRecord",
        "RejectedRecord",
        "RequestEvent",
    ]


def test_lines_that_are_not_json_objects_are_sent_on_their_own(tmp_path: Path) -> None:
    lone = [b"this is not json", b"[1, 2, 3]", b"42", b'"text"', b"null", b"{broken"]
    lines: list[Any] = [
        rec(0),
        lone[0],
        rec(1),
        lone[1],
        lone[2],
        rec(2),
        lone[3],
        lone[4],
        lone[5],
        rec(3),
    ]
    got = messages([write(tmp_path / "a.jsonl", lines)], 2)
    alone = [v for _, v in got if v in lone]
    assert alone == lone, "each sent once, unchanged, in file order"
    assert all(k is None for k, v in got if v in lone)
    batches = [records_of(v) for _, v in got if v not in lone]
    assert batches == [[rec(0), rec(1)], [rec(2), rec(3)]]
    assert len(got) == len(lone) + 2


def test_file_order_is_kept_across_files(tmp_path: Path) -> None:
    a = write(tmp_path / "a.jsonl", [rec(i) for i in range(5)])
    b = write(tmp_path / "b.jsonl", [{"records": [rec(i) for i in range(5, 9)]}, rec(9)])
    c = write(tmp_path / "c.jsonl", [rec(i) for i in range(10, 13)])
    got = messages([a, b, c], 4)
    assert [len(records_of(v)) for _, v in got] == [4, 4, 4, 1]
    assert [r["event_id"] for _, v in got for r in records_of(v)] == [f"e-{i}" for i in range(13)]
    # and the other way round: files in the order named
    again = messages([c, a], 100)
    assert [r["event_id"] for _, v in again for r in records_of(v)] == [
        *(f"e-{i}" for i in range(10, 13)),
        *(f"e-{i}" for i in range(5)),
    ]


def test_batch_envelopes_are_valid_json_with_the_records_unchanged(tmp_path: Path) -> None:
    odd = {
        "event_id": "ünï-\u2028",
        "ts": "2026-11-18T07:00:00.123456+02:00",
        "account_id": "acct-é",
        "operation": "face.identify",
        "extra": {"nested": [1, 2.5, None, True]},
    }
    got = messages([write(tmp_path / "a.jsonl", [odd, {"records": [odd]}])], 5)
    (value,) = [v for _, v in got]
    assert records_of(value) == [odd, odd]


def test_batch_with_a_deeply_nested_record_does_not_crash(tmp_path: Path) -> None:
    """orjson reads 1024 levels of nesting but writes only 254: a valid archive line whose
    record carries a deep unknown field must still be published (replay accepts it; unknown
    fields are ignored). Today `archive_messages` raises JSONEncodeError ("Recursion limit
    reached") when it re-serialises the record, and `frwatch publish --batch` dies with a
    traceback."""
    deep = b"[" * 300 + b"]" * 300
    record = orjson.dumps(rec(1))[:-1] + b',"extra":' + deep + b"}"
    line = b'{"records":[' + record + b"," + orjson.dumps(rec(2)) + b"]}"
    path = tmp_path / "deep.jsonl"
    path.write_bytes(line + b"\n")
    got = messages([str(path)], 10)
    sent = [r for _, v in got for r in decode_request_message(v or b"")]
    assert [getattr(r, "event_id", None) for r in sent] == ["e-1", "e-2"]


# --- the command line -----------------------------------------------------------------------


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FRWATCH_")}
    # an unreachable broker: nothing here may get as far as connecting
    base.update({"FRWATCH_BROKER": "127.0.0.1:1", "COLUMNS": "100"}, **env)
    return subprocess.run(
        [sys.executable, "-m", "streams.cli.main", *args],
        env=base,
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip("\n").splitlines()
    assert len(lines) == 1, proc.stderr
    assert proc.stdout == ""
    return lines[0]


def test_help_lists_the_commands() -> None:
    proc = run("--help")
    assert proc.returncode == 0, proc.stderr
    for command in (
        "worker",
        "replay",
        "rules",
        "topics",
        "accounts",
        "publish",
        "alerts",
        "bench",
    ):
        assert command in proc.stdout
    assert "FRWATCH_" in proc.stdout


def test_worker_help_shows_every_setting_variable_with_its_default() -> None:
    proc = run("worker", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # undo argparse's line wrapping
    assert len(SETTINGS) >= 11
    for field, env, default, _ in SETTINGS:
        assert f"env {env}" in text, env
        assert f"--{field.replace('_', '-')}" in text
        if default:
            assert f"default {default}" in text, (env, default)


@pytest.mark.parametrize(
    "args",
    [
        ["bogus"],
        ["--bogus"],
        [],
        ["worker", "--bogus"],
        ["worker", "extra"],
        ["publish", "--nope", "x.jsonl"],
        ["publish", "--batch", "x", "x.jsonl"],
        ["publish", "--batch", "0", "x.jsonl"],
        ["publish", "--from-line", "0", "x.jsonl"],
        ["publish", "--from-line", "x", "x.jsonl"],
        ["publish", "--give-up-after", "0", "x.jsonl"],
        ["publish"],
        ["topics"],
        ["topics", "bogus"],
        ["alerts", "tail", "--bogus"],
        ["rules", "nope"],
        ["replay", "--nope", "x.jsonl"],
    ],
    ids=lambda a: " ".join(a) or "(none)",
)
def test_unknown_command_or_flag_is_one_line_and_exit_2(args: list[str]) -> None:
    line = one_line_error(run(*args))
    assert "error" in line and line.startswith("frwatch")


@pytest.mark.parametrize("port", ["abc", "0", "65536", "-1", "6066x", "80 80"])
def test_bad_web_port_is_one_line_and_exit_2(port: str) -> None:
    line = one_line_error(run("worker", FRWATCH_WEB_PORT=port))
    assert "FRWATCH_WEB_PORT" in line


def test_bad_web_port_flag_is_one_line_and_exit_2() -> None:
    line = one_line_error(run("worker", "--web-port", "99999"))
    assert "99999" in line


@pytest.mark.parametrize("value", ["x", "-1", "65", "1.5", ""])
def test_bad_screening_processes_is_one_line_and_exit_2(value: str) -> None:
    line = one_line_error(run("worker", FRWATCH_SCREENING_PROCESSES=value))
    assert "FRWATCH_SCREENING_PROCESSES" in line and "0..64" in line


@pytest.mark.parametrize(("value", "want"), [("0", 0), ("1", 1), (" 4 ", 4), ("64", 64)])
def test_screening_processes_from_the_environment(value: str, want: int) -> None:
    assert settings_from_env({"FRWATCH_SCREENING_PROCESSES": value}).screening_processes == want
    assert settings_from_env({}).screening_processes == 1
    flag = settings_from_env({}, {"screening_processes": value}).screening_processes
    assert flag == want


def test_publish_help_explains_line_numbers_and_the_resume() -> None:
    proc = run("publish", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for words in ("--from-line N", "1-based", "--topic T", "--give-up-after SECONDS", "exits 2"):
        assert words in text, words
