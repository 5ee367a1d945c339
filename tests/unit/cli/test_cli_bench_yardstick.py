"""The bench's yardstick gives frwatch's alerts: what makes it a fair comparison."""

from __future__ import annotations

import ast
import io
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson

from streams.cli import bench_yardstick
from streams.core.rules import load_rules
from streams.realistic_traffic import write_realistic_archive
from streams.replay import load_accounts, open_all, replay


def test_the_yardstick_gives_the_alert_ids_of_frwatch(tmp_path: Path) -> None:
    archive, accounts = tmp_path / "real.jsonl", tmp_path / "accounts.jsonl"
    write_realistic_archive(str(archive), str(accounts), 100_000, seed=9)
    ids, counts = bench_yardstick.run(str(accounts), [str(archive)])
    sink = io.BytesIO()
    summary = replay(
        open_all([str(archive)]), load_rules(), load_accounts(str(accounts), print), sink
    )
    alerts = [orjson.loads(line) for line in sink.getvalue().splitlines()]
    alerts = [a for a in alerts if a["status"] == "open"]  # an alert: its open revision
    assert len({a["rule_id"] for a in alerts}) >= 9  # most of the catalog fires
    assert Counter(ids) == Counter(a["alert_id"] for a in alerts)
    assert (counts["events"], counts["malformed"]) == (summary.events, summary.malformed)


def test_the_yardstick_is_independent_of_frwatch() -> None:
    tree = ast.parse(Path(bench_yardstick.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}  # fmt: skip
    assert imported <= {"__future__", "datetime", "hashlib", "heapq", "json", "re", "sys", "typing"}


def test_bench_offline_reports_replay_against_the_yardstick() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli.main",
            "bench",
            "--offline",
            "--json",
            "--events",
            "20000",
        ],
        capture_output=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    result = orjson.loads(proc.stdout.splitlines()[-1])
    assert result["yardstick_agrees"] is True
    assert result["realistic_events"] == 20000
    for key in ("yardstick_eps", "realistic_replay_eps", "realistic_replay_workers2_eps"):
        assert result[key] > 0
    ratio = result["realistic_replay_eps"] / result["yardstick_eps"]
    assert abs(result["yardstick_ratio"] - ratio) < 0.02
