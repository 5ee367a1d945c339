"""`frwatch bench --offline` on a realistic archive: frwatch replay against the yardstick.

The same archive (`streams.realistic_traffic`) goes through the plain implementation of
the catalog (`streams.cli.bench_yardstick`), frwatch's replay in one process and with
`--workers 2`, in one run; all three must give the same alert ids.

    python -m streams.cli.bench_realistic [EVENTS]   prints one JSON line
"""

from __future__ import annotations

import io
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import orjson

from streams.cli import bench_yardstick
from streams.core.rules import load_rules
from streams.realistic_traffic import write_realistic_archive
from streams.replay import load_accounts, open_all, replay
from streams.replay_parallel import replay_parallel

WORKERS = 2


def _cpu_with_children() -> float:
    """CPU seconds of this process and of its children that have ended."""
    me, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _alert_ids(sink: io.BytesIO) -> list[str]:
    """The alert_id of every alert: of its `open` revision (SPEC 5)."""
    docs = (orjson.loads(line) for line in sink.getvalue().splitlines())
    return [d["alert_id"] for d in docs if d.get("status", "open") == "open"]


def measure_realistic(n_events: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Events/s of the yardstick, of replay at 1 and at `WORKERS` processes, and their ratios."""
    with tempfile.TemporaryDirectory(prefix="frwatch-bench-real-") as tmp:
        path, accounts_path = os.path.join(tmp, "real.jsonl"), os.path.join(tmp, "accounts.jsonl")
        say(f"bench: generating {n_events:,} realistic records ...")
        write_realistic_archive(path, accounts_path, n_events)
        say("bench: the yardstick (json + datetime + dicts) ...")
        started, cpu = time.perf_counter(), time.process_time()
        yard_ids, yard_counts = bench_yardstick.run(accounts_path, [path])
        yard_s, yard_cpu = time.perf_counter() - started, time.process_time() - cpu
        rules = load_rules()
        accounts = load_accounts(accounts_path, say)
        say("bench: replay, one process ...")
        one_sink = io.BytesIO()
        cpu = time.process_time()
        one = replay(open_all([path]), rules, accounts, one_sink)
        one_cpu = time.process_time() - cpu
        say(f"bench: replay, {WORKERS} workers ...")
        many_sink = io.BytesIO()
        cpu = _cpu_with_children()
        many = replay_parallel(open_all([path]), rules, accounts, many_sink, WORKERS)
        many_cpu = _cpu_with_children() - cpu
    ids = _alert_ids(one_sink)
    agrees = sorted(ids) == sorted(yard_ids) == sorted(_alert_ids(many_sink))
    if not agrees or (one.events, one.malformed) != (
        yard_counts["events"],
        yard_counts["malformed"],
    ):
        say("bench: WARNING: the yardstick and replay disagree (alert ids or counts)")
    yard_eps = yard_counts["events"] / yard_s
    one_eps = one.events / one.seconds
    many_eps = many.events / many.seconds
    # records per second of CPU: on a shared machine, where other processes take the cores
    # from either run at random, this ratio moves far less than the wall-clock one
    yard_cpu_eps, one_cpu_eps = yard_counts["events"] / yard_cpu, one.events / one_cpu
    return {
        "realistic_events": one.events,
        "realistic_alerts": one.alerts,
        "yardstick_eps": round(yard_eps),
        "realistic_replay_eps": round(one_eps),
        "yardstick_ratio": round(one_eps / yard_eps, 2),
        "yardstick_cpu_eps": round(yard_cpu_eps),
        "realistic_replay_cpu_eps": round(one_cpu_eps),
        "yardstick_ratio_cpu": round(one_cpu_eps / yard_cpu_eps, 2),
        f"realistic_replay_workers{WORKERS}_eps": round(many_eps),
        f"workers{WORKERS}_speedup": round(many_eps / one_eps, 2),
        # the CPU time of all the processes against one process's: what sharing costs, so
        # the speed-up to expect with N free cores is about N / this
        f"workers{WORKERS}_cpu_ratio": round(many_cpu / one_cpu, 2),
        "yardstick_agrees": agrees,
    }


if __name__ == "__main__":
    result = measure_realistic(
        int(sys.argv[1]) if len(sys.argv) > 1 else 200_000,
        lambda m: print(m, file=sys.stderr, flush=True),
    )
    print(orjson.dumps(result).decode())
