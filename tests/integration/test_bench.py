"""`frwatch bench` against the real broker: every measurement taken, the JSON contract kept,
and nothing left behind on the broker."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from worker_harness import frwatch, frwatch_env

from streams.cli.bench_live import _rate

pytestmark = pytest.mark.integration

KEYS = [
    "batch",
    "raw_consume_eps",
    "faust_floor_eps",
    "detector_eps",
    "ratio",
    "alert_latency_ms",
    "replay_eps",
    "replay_azure_eps",
    # the realistic archive, against the yardstick (streams/cli/bench_realistic.py)
    "realistic_events",
    "realistic_alerts",
    "yardstick_eps",
    "realistic_replay_eps",
    "yardstick_ratio",
    "yardstick_cpu_eps",
    "realistic_replay_cpu_eps",
    "yardstick_ratio_cpu",
    "realistic_replay_workers2_eps",
    "workers2_speedup",
    "workers2_cpu_ratio",
    "yardstick_agrees",
]


async def _topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


@pytest.mark.parametrize("batch", [1, 50])
def test_bench_measures_every_path_and_cleans_up(
    kafka_bootstrap: str, unique_name: str, batch: int
) -> None:
    env = frwatch_env(kafka_bootstrap, unique_name)
    done = frwatch(
        ["bench", "--events", "20000", "--batch", str(batch), "--json"], env, timeout=600
    )
    result = orjson.loads(done.stdout.splitlines()[-1])
    assert list(result) == KEYS
    assert result["batch"] == batch
    assert result["yardstick_agrees"] is True
    for key in (
        "raw_consume_eps",
        "faust_floor_eps",
        "detector_eps",
        "replay_eps",
        "replay_azure_eps",
    ):
        assert result[key] > 0, key
    assert result["ratio"] == pytest.approx(
        result["detector_eps"] / result["raw_consume_eps"], abs=0.002
    )
    latency = result["alert_latency_ms"]
    assert list(latency) == ["p50", "p99"]
    assert 0 < latency["p50"] <= latency["p99"] < 10_000
    # the human summary goes to stderr, ending with the same figures
    assert b"bench: batch=" in done.stderr
    leftovers = [t for t in asyncio.run(_topics(kafka_bootstrap)) if "frwatch-bench-" in t]
    assert leftovers == []


def test_rate_uses_counts_read_while_running() -> None:
    # polls at 0.1 s: the first and last records fell between polls; the rate between the
    # first and last counts read below the total is exact
    samples = [(10.0, 500.0), (10.1, 1500.0), (10.2, 2500.0), (10.3, 3500.0), (10.4, 4000.0)]
    assert _rate(samples, 4000) == pytest.approx(30_000 / 3)
    # too short for two running polls: the whole span
    assert _rate([(1.0, 10.0), (1.5, 100.0)], 100) == pytest.approx(200.0)
    assert _rate([(1.0, 100.0)], 100) == 0.0
