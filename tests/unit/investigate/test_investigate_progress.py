"""Replay's progress line on a terminal: records, rate and, for files, share done and ETA."""

from __future__ import annotations

import gzip
import io
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import orjson

from streams.core.rules import load_rules
from streams.replay import Progress, open_all, position_of, replay
from streams.synthetic import DEFAULT_START_MS, demo_traffic
from topics.accounts import AccountDirectory


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def archive(path: Path, zipped: bool) -> Path:
    data = b"".join(orjson.dumps(e) + b"\n" for e in demo_traffic(3, DEFAULT_START_MS, 100))
    path.write_bytes(gzip.compress(data) if zipped else data)
    return path


def test_progress_shows_records_rate_share_and_eta(tmp_path: Path) -> None:
    paths = [str(archive(tmp_path / "a.jsonl.gz", True)), str(archive(tmp_path / "b.jsonl", False))]
    term = Terminal()
    summary = replay(
        open_all(paths), load_rules(), AccountDirectory(), io.BytesIO(), Progress(term, interval=0)
    )
    frames = [f for f in term.getvalue().split("\r\x1b[K") if f]
    assert len(frames) > 100  # redrawn as it goes (interval 0: every line)
    assert all("records (" in f and "/s)" in f and "ETA " in f for f in frames)
    shares = [int(f.split("]")[1].split("%")[0]) for f in frames]
    assert shares == sorted(shares) and shares[0] < 50 and shares[-1] >= 95
    assert f"{summary.events:,} records" in frames[-1]
    assert term.getvalue().endswith("\r\x1b[K")  # cleared at the end


def test_gzip_progress_counts_compressed_bytes(tmp_path: Path) -> None:
    path = archive(tmp_path / "a.jsonl.gz", True)
    [(_, fh)] = open_all([str(path)])
    position = position_of(fh)
    assert position() == 0
    while fh.readline():
        assert position() <= path.stat().st_size
    assert position() == path.stat().st_size


def test_stdin_has_no_eta(tmp_path: Path) -> None:
    term = Terminal()
    progress = Progress(term, interval=0)
    progress.expect(["-"])
    assert progress.total_bytes is None


def test_silent_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    progress = Progress(io.StringIO(), interval=0)
    path = str(archive(tmp_path / "a.jsonl", False))
    replay(open_all([path]), load_rules(), AccountDirectory(), io.BytesIO(), progress)
    assert progress.stream.getvalue() == ""  # type: ignore[attr-defined]


def test_a_real_terminal_gets_the_line_and_the_summary() -> None:
    # a pseudo-terminal as stderr: the CLI itself decides that it is a terminal; stdin is fed
    # a line at a time until the progress line shows (stdin has no size: no ETA)
    events = iter(demo_traffic(3, DEFAULT_START_MS, 3000))
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRWATCH_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli.main", "replay", "--out", os.devnull, "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    assert proc.stdin is not None
    seen = b""
    sent = 0
    deadline = time.monotonic() + 60
    while b"records (" not in seen:
        assert time.monotonic() < deadline, seen
        proc.stdin.write(orjson.dumps(next(events)) + b"\n")
        proc.stdin.flush()
        sent += 1
        if select.select([leader], [], [], 0.05)[0]:
            seen += os.read(leader, 65536)
    proc.stdin.close()
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    text = seen.decode()
    line = text.split("\r\x1b[K")[1]
    assert line.startswith("replay: ") and "/s)" in line and "ETA" not in line
    summary = orjson.loads(text.rsplit("\r\x1b[K", 1)[-1].strip())
    assert summary["events"] == sent
