"""How `frwatch bench` watches its worker: counts polled from /metrics, RSS read at the marks,
a stuck or dead worker reported instead of waited for (a stand-in HTTP endpoint on loopback
and a sleeping process play the worker; the Kafka path is in tests/integration/test_bench.py).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import streams.cli.bench_live as bench_live
from streams.cli.bench_live import _rss_report, _watch_worker


class _Counts:
    """Serves frwatch_events_total from a script of values, one per request."""

    def __init__(self, values: list[float]) -> None:
        self.values = values
        self.queries: list[str] = []

    def page(self, path: str) -> bytes:
        self.queries.append(path)
        n = self.values.pop(0) if len(self.values) > 1 else self.values[0]
        return (
            "# TYPE frwatch_events_total counter\n"
            f'frwatch_events_total{{result="processed"}} {n}\n'
            'frwatch_events_total{result="malformed"} 0.0\n'
        ).encode()


@pytest.fixture
def endpoint() -> Iterator[tuple[int, _Counts]]:
    counts = _Counts([0.0])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = counts.page(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], counts
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_counts_and_rss_at_each_mark_reached(
    endpoint: tuple[int, _Counts], sleeper: subprocess.Popen[bytes], monkeypatch: Any
) -> None:
    port, counts = endpoint
    monkeypatch.setattr(bench_live, "RSS_MARKS", (300, 1_000, 10_000))
    counts.values = [0.0, 100.0, 350.0, 900.0, 1_200.0, 2_000.0]
    said: list[str] = []
    samples, rss = _watch_worker(sleeper, port, 2_000, said.append)
    assert [n for _, n in samples] == [100.0, 350.0, 900.0, 1_200.0, 2_000.0]
    assert [t for t, _ in samples] == sorted(t for t, _ in samples)
    # the first poll at or past each mark below the total, and the end; 10,000 never came
    assert list(rss) == [300, 1_000, 2_000]
    assert all(10 < mib < 1_000 for mib in rss.values())  # a Python process's RSS
    # it asked for the one family it reads
    assert all(q.endswith("?name[]=frwatch_events_total") for q in counts.queries)


def test_a_worker_that_stops_counting_is_reported(
    endpoint: tuple[int, _Counts], sleeper: subprocess.Popen[bytes], monkeypatch: Any
) -> None:
    port, counts = endpoint
    monkeypatch.setattr(bench_live, "STALL_S", 0.5)
    counts.values = [10.0, 20.0, 20.0]
    with pytest.raises(RuntimeError, match=r"no record for 0.5 s \(at 20 of 1,000\)"):
        _watch_worker(sleeper, port, 1_000, lambda _: None)


def test_a_worker_that_exits_is_reported(endpoint: tuple[int, _Counts]) -> None:
    port, _ = endpoint
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    with pytest.raises(RuntimeError, match="worker exited 3"):
        _watch_worker(dead, port, 1_000, lambda _: None)


def test_rss_report_reads_as_a_sentence() -> None:
    assert _rss_report({100_000: 80.0, 1_000_000: 84.0}) == (
        "80.0 MiB after 100,000 events, 84.0 MiB after 1,000,000 events (+5.0%)"
    )
    assert _rss_report({20_000: 71.3}) == "71.3 MiB after 20,000 events"


def test_rss_at_a_mark_is_the_lowest_of_the_readings_from_it_on(
    endpoint: tuple[int, _Counts], sleeper: subprocess.Popen[bytes], monkeypatch: Any
) -> None:
    """Input in flight swings RSS from poll to poll: each mark takes RSS_READINGS readings."""
    port, counts = endpoint
    monkeypatch.setattr(bench_live, "RSS_MARKS", (300, 1_000))
    monkeypatch.setattr(bench_live, "RSS_READINGS", 3)
    readings = iter([90.0, 70.0, 80.0, 95.0, 60.0, 66.0, 64.0, 65.0])
    monkeypatch.setattr(bench_live, "_rss_mib", lambda pid: next(readings))
    # the 300 mark: polls at 350, 400, 450; the 1,000 mark: 1,200 only (the run ends at
    # 2,000, before its three readings); the end: three more, after the last poll
    counts.values = [350.0, 400.0, 450.0, 1_200.0, 2_000.0]
    _, rss = _watch_worker(sleeper, port, 2_000, lambda _: None)
    assert rss == {300: 70.0, 1_000: 60.0, 2_000: 64.0}
