"""`frwatch bench`: replay speed offline; the live measurements need a broker."""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tempfile
from typing import Any

import orjson

from streams.cli.bench_realistic import measure_realistic
from streams.core.rules import load_rules
from streams.replay import open_all, replay
from streams.settings import Settings
from streams.synthetic import bench_traffic, sample_directory
from topics.formats import InputFormat, load_format
from topics.timestamps import format_ms


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_archive(path: str, n_events: int) -> int:
    """Generate the bench traffic as a JSON-lines archive; returns its size in bytes."""
    with open(path, "wb") as fh:
        buf = []
        for ev in bench_traffic(n_events):
            buf.append(orjson.dumps(ev))
            if len(buf) >= 10_000:
                fh.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            fh.write(b"\n".join(buf) + b"\n")
    return os.path.getsize(path)


def azure_record(ev: dict[str, Any]) -> dict[str, Any]:
    """A bench event as an Azure resource log record (SPEC 2.4) that maps back to it."""
    ts = format_ms(ev["ts"])
    props: dict[str, Any] = {"apiName": "bench", "requestLength": 512, "objectId": ""}
    if ev.get("model"):
        props["modelName"] = ev["model"]
    return {
        "Tenant": ev.get("region") or "eastus",
        "callerIpAddress": ev.get("client_ip") or "81.2.69.***",
        "category": "RequestResponse",
        "correlationId": ev["event_id"],
        "durationMs": "212",
        "event": "ShoeboxCallResult",
        "location": ev.get("region") or "eastus",
        "operationName": ev["operation"],
        # the string form of properties: the dearer of the two the format reads
        "properties": orjson.dumps(props).decode(),
        "resourceId": f"/SUBSCRIPTIONS/{ev['account_id'].upper()}/RESOURCEGROUPS/BENCH"
        "/PROVIDERS/MICROSOFT.COGNITIVESERVICES/ACCOUNTS/BENCH-01",
        "resultSignature": "200",
        # 7-digit fractions, as Azure writes them
        "time": ts[:-1] + "0000Z",
    }


def write_azure_archive(path: str, n_events: int) -> int:
    """The bench traffic as Azure resource log records, one per line; its size in bytes."""
    with open(path, "wb") as fh:
        for ev in bench_traffic(n_events):
            fh.write(orjson.dumps(azure_record(ev)) + b"\n")
    return os.path.getsize(path)


def measure_replay(path: str, input_format: InputFormat | None = None) -> dict[str, Any]:
    """Replay the archive once; events/s and peak RSS."""
    rules = load_rules()
    sink = io.BytesIO()
    summary = replay(open_all([path]), rules, sample_directory(), sink, input_format=input_format)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "replay_eps": round(summary.events / summary.seconds),
        "events": summary.events,
        "alerts": summary.alerts,
        "seconds": round(summary.seconds, 3),
        "peak_rss_mib": round(peak_kib / 1024, 1),
    }


KEYS = (
    "batch",
    "raw_consume_eps",
    "faust_floor_eps",
    "detector_eps",
    "ratio",
    "alert_latency_ms",
    "replay_eps",
    "replay_azure_eps",
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
)


def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    """Run the benchmark; a human summary on stderr, and with --json one JSON object last."""
    with tempfile.TemporaryDirectory(prefix="frwatch-bench-") as tmp:
        path = os.path.join(tmp, "bench.jsonl")
        _say(f"bench: generating {args.events:,} events ...")
        write_archive(path, args.events)
        _say("bench: replaying ...")
        replayed = measure_replay(path)
        _say(
            f"bench: replay {replayed['replay_eps']:,} events/s, {replayed['alerts']} alerts, "
            f"peak RSS {replayed['peak_rss_mib']} MiB"
        )
        # the same traffic in the azure-resource-log format: what mapping costs per record
        azure_path = os.path.join(tmp, "bench-azure.jsonl")
        write_azure_archive(azure_path, args.events)
        mapped = measure_replay(azure_path, load_format("azure-resource-log"))
        _say(
            f"bench: replay of the same events as azure-resource-log records "
            f"{mapped['replay_eps']:,} events/s"
        )
        result: dict[str, Any] = {
            "batch": args.batch,
            "replay_eps": replayed["replay_eps"],
            "replay_azure_eps": mapped["replay_eps"],
        }
        # what investigators replay: mixed timestamp forms, unicode, redeliveries, batches
        real = measure_realistic(args.events, _say)
        _say(
            f"bench: realistic archive: replay {real['realistic_replay_eps']:,} events/s, "
            f"{real['yardstick_ratio']}x the yardstick ({real['yardstick_eps']:,} events/s; "
            f"per CPU second {real['yardstick_ratio_cpu']}x); "
            f"--workers 2 {real['realistic_replay_workers2_eps']:,} events/s "
            f"({real['workers2_speedup']}x; CPU of all its processes "
            f"{real['workers2_cpu_ratio']}x one process's)"
        )
        result.update(real)
        if not args.offline:
            from streams.cli.bench_live import measure_live

            live = measure_live(settings, path, args.events, args.batch, _say)
            result.update(live)
    _say("bench: " + ", ".join(f"{k}={v}" for k, v in result.items()))
    if args.json:
        print(orjson.dumps({k: result[k] for k in KEYS if k in result}).decode())
    return 0
