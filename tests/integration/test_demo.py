"""`make demo` (deploy/demo/run) end to end: its own broker, worker and traffic; every rule
alerts, everything it started is stopped, and it can run twice in a row."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from worker_harness import REPO, free_port

pytestmark = pytest.mark.integration

DEMO = REPO / "deploy" / "demo" / "run"
BROKER = REPO / "deploy" / "kafka" / "broker"
RULE_IDS = {f"FR-{i:03d}" for i in range(1, 11)}
RUN_TIMEOUT_S = 240


def _port_pair() -> int:
    """A free port p whose controller port p+10000 (the broker script's default) is free too."""
    for _ in range(200):
        p = free_port()
        if p + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 10000))
        except OSError:
            continue
        return p
    raise AssertionError("no free port pair found")


def _brokers_of(run_dir: Path) -> list[int]:
    """Pids of live processes whose command line names this run dir (the demo's broker JVM)."""
    needle = str(run_dir) + "/"
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmd and state not in ("Z", "X"):
            pids.append(int(proc.name))
    return pids


def _demo_env(port: int, web_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRWATCH_", "KAFKA_"))}
    env.update(
        {
            "KAFKA_PORT": str(port),
            "FRWATCH_WEB_PORT": str(web_port),
            "DEMO_SECONDS": "20",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _run_demo(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DEMO)],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def test_demo_alerts_on_every_rule_and_cleans_up_twice_in_a_row() -> None:
    port = _port_pair()
    run_dir = REPO / "deploy" / "kafka" / ".run" / str(port)
    assert not run_dir.exists()
    env = _demo_env(port, free_port())
    try:
        for attempt in (1, 2):
            env["FRWATCH_WEB_PORT"] = str(free_port())
            proc = _run_demo(env)
            report = (
                f"run {attempt}, exit {proc.returncode}\n"
                f"--- stdout:\n{proc.stdout[-4000:]}\n--- stderr:\n{proc.stderr[-4000:]}"
            )
            assert proc.returncode == 0, report
            assert "starting a Kafka broker" in proc.stderr, report  # its own, on our port
            alert_lines = [line for line in proc.stdout.splitlines() if " id=" in line]
            fired = {m for line in alert_lines for m in re.findall(r"\bFR-0(?:0[1-9]|10)\b", line)}
            assert fired == RULE_IDS, report
            # an alert being updated and closed (SPEC 5): appended lines, stdout is no terminal
            grown = [line for line in alert_lines if line.startswith("updated ")]
            closed = [line for line in alert_lines if line.startswith("closed ")]
            assert [re.search(r" count=(\d+)", line)[1] for line in grown] == ["10", "100"], report  # type: ignore[index]
            assert len(closed) == 1 and " count=150 " in closed[0] and "FR-001" in closed[0], report
            assert 'frwatch_alert_revisions_total{status="closed"} 1.0' in proc.stderr, report
            assert 'frwatch_alerts_total{rule_id="FR-001"' in proc.stderr, report
            assert "stopped" in proc.stderr, report
            assert _brokers_of(run_dir) == [], f"broker of {run_dir} still running\n{report}"
    finally:
        if _brokers_of(run_dir):
            subprocess.run(
                [str(BROKER), "down"],
                env={**env, "KAFKA_PORT": str(port)},
                cwd=REPO,
                capture_output=True,
                timeout=120,
            )
        shutil.rmtree(run_dir, ignore_errors=True)
    assert not run_dir.exists()
