"""Reproduction (not collected by pytest): a worker leaves the group under load, and the one
that takes over its partitions sometimes stops consuming (seen in about 1 of 3 runs).

    deploy/kafka/broker up
    cd tests/integration && ../../.venv/bin/python repro_rebalance_stall.py [127.0.0.1:9092]

Prints `ok` or `STALL` with the records each worker counted. Kept here, not in the suite,
until the cause is found: the surviving worker logs "Worker ready" after the last rebalance
and then fetches nothing (all agents idle; stock Faust 0.15.3 consumer).
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

from scenarios import scenario_archive, write_jsonl
from worker_harness import Worker, alert_ids_on_topic, frwatch, frwatch_env, replay_alerts, wait_for


def main(bootstrap: str) -> int:
    """One run of the scenario; exit 0 when the alert set completes, 1 on a stall."""
    name = "stall-" + uuid.uuid4().hex[:8]
    tmp = Path("/tmp") / name
    tmp.mkdir()
    env = frwatch_env(bootstrap, name)
    accounts, events = scenario_archive(tmp, hours=12)
    frwatch(["topics", "create"], env)
    frwatch(["accounts", "load", str(accounts)], env)
    expected, _ = replay_alerts(events, accounts, env)
    want = {a["alert_id"] for a in expected}
    lines = events.read_bytes().splitlines()
    half = len(lines) // 2
    frwatch(["publish", str(write_jsonl(tmp / "first.jsonl", lines[:half]))], env)
    first = Worker(env, tmp / "w1").start()
    wait_for(lambda: first.records_counted() > 0, 90, "the first worker", first)
    second = Worker(env, tmp / "w2").start()
    frwatch(["publish", str(write_jsonl(tmp / "second.jsonl", lines[half:]))], env)
    wait_for(lambda: second.records_counted() > 0, 90, "the joiner", [first, second])
    first.stop()
    deadline = time.monotonic() + 120
    got: set[str] = set()
    while time.monotonic() < deadline:
        got = set(alert_ids_on_topic(bootstrap, env["FRWATCH_TOPIC_ALERTS"]))
        if got >= want:
            break
        time.sleep(2)
    verdict = "ok" if got >= want else "STALL"
    print(
        verdict,
        f"alerts {len(got & want)}/{len(want)}",
        f"second worker counted {second.records_counted()}; logs in {tmp}",
    )
    second.stop()
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092"))
