"""`frwatch archive` and archive directories on the command line, no broker needed."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streams.archive_layout import MARKER, escape_value, file_name, hour_dir_name, marker_bytes
from streams.synthetic import DEFAULT_START_MS, SAMPLE_ACCOUNTS, demo_traffic

REPO = Path(__file__).resolve().parents[3]


def frwatch(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "FRWATCH_BROKER": "127.0.0.1:1", **env},
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--keep-days", "0"], "--keep-days must be >= 1"),
        (["--max-file-bytes", "10"], "--max-file-bytes must be >= 1024"),
        (["--max-file-seconds", "0"], "--max-file-seconds must be > 0 and <= 3600"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path: Path, flags: list[str], message: str) -> None:
    proc = frwatch("archive", "--dir", str(tmp_path / "a"), *flags)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"frwatch archive: error: {message}"]


def test_an_archive_of_another_topic_is_refused_before_connecting(tmp_path: Path) -> None:
    (tmp_path / MARKER).write_bytes(marker_bytes("other.requests"))
    proc = frwatch("archive", "--dir", str(tmp_path))
    assert proc.returncode == 2
    assert "archives topic 'other.requests', not 'api.requests'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_replay_of_a_directory_equals_replay_of_its_messages_in_order(tmp_path: Path) -> None:
    """Lines of two hours and two partitions, with unsafe values: replaying the directory
    equals replaying the same values in the archive's order as a plain file."""
    events = list(demo_traffic(5, DEFAULT_START_MS, 120))
    pretty = orjson.dumps(events[0], option=orjson.OPT_INDENT_2)  # several lines, valid JSON
    values: list[bytes | None] = [orjson.dumps(e) for e in events[1:]]
    values[10:10] = [pretty, None, b"", b"\xff\xfe", b" \r\n "]
    root = tmp_path / "archive"
    root.mkdir()
    (root / MARKER).write_bytes(marker_bytes("api.requests"))
    quarter = len(values) // 4
    chunks = [values[i * quarter : (i + 1) * quarter if i < 3 else None] for i in range(4)]
    hour = DEFAULT_START_MS - DEFAULT_START_MS % 3_600_000
    layout = [(hour, 0, 0), (hour, 1, 0), (hour + 3_600_000, 0, 1_000), (hour + 3_600_000, 1, 7)]
    for (h, p, first), chunk in zip(layout, chunks, strict=True):
        d = root / hour_dir_name(h)
        d.mkdir(exist_ok=True)
        with gzip.open(d / file_name(p, first), "wb") as fh:
            fh.write(b"".join(escape_value(v) + b"\n" for v in chunk))
    accounts = tmp_path / "accounts.jsonl"
    accounts.write_bytes(b"\n".join(orjson.dumps(a) for a in SAMPLE_ACCOUNTS) + b"\n")
    from_dir = frwatch("replay", "--accounts", str(accounts), str(root))
    assert from_dir.returncode == 0, from_dir.stderr
    # the same values as a plain file: the pretty event on one line, the others as malformed
    plain = tmp_path / "plain.jsonl"
    flat = [
        b"\n".join(orjson.dumps(orjson.loads(v)) if v == pretty else (v or b"") for v in c)
        for c in chunks
    ]
    plain.write_bytes(b"\n".join(flat) + b"\n")
    from_file = frwatch("replay", "--accounts", str(accounts), str(plain))
    ids = [orjson.loads(line)["alert_id"] for line in from_dir.stdout.splitlines()]
    assert ids and ids == [orjson.loads(line)["alert_id"] for line in from_file.stdout.splitlines()]
    summary = orjson.loads(from_dir.stderr.strip().splitlines()[-1])
    # the plain file cannot hold the empty and blank values: the directory counts them
    plain_summary = orjson.loads(from_file.stderr.strip().splitlines()[-1])
    assert summary["events"] == len(values) == plain_summary["events"] + 3
    assert summary["malformed"] == plain_summary["malformed"] + 3


def test_replay_of_a_directory_that_is_no_archive_exits_2(tmp_path: Path) -> None:
    proc = frwatch("replay", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"frwatch replay: error: {tmp_path}: a directory, but not one written by frwatch archive"
    )
