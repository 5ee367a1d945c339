"""Per-record cost of each input format: decode and validate only, and the whole replay.

`python -m streams.cli.bench_formats [N]`: the bench traffic as frwatch events and as
azure-resource-log records (`streams.cli.bench`), best of 5 interleaved runs each.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from streams.cli.bench import write_archive, write_azure_archive
from streams.core.rules import load_rules
from streams.replay import open_all, replay
from streams.synthetic import sample_directory
from topics.formats import load_format
from topics.requests import decode_request_message


def measure(n: int, runs: int = 5) -> dict[str, float]:
    """Microseconds per record, best of `runs`: `decode_<format>` and `replay_<format>`."""
    azure = load_format("azure-resource-log")
    rules = load_rules()
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="frwatch-bench-formats-") as tmp:
        plain, mapped = os.path.join(tmp, "frwatch.jsonl"), os.path.join(tmp, "azure.jsonl")
        write_archive(plain, n)
        write_azure_archive(mapped, n)
        with open(plain, "rb") as fh:
            plain_lines = fh.read().splitlines()
        with open(mapped, "rb") as fh:
            mapped_lines = fh.read().splitlines()
        assert azure is not None
        cases: list[tuple[str, Callable[[bytes], Any], list[bytes], str, Any]] = [
            ("frwatch", decode_request_message, plain_lines, plain, None),
            ("azure", azure.decode_message, mapped_lines, mapped, azure),
        ]
        for _ in range(runs):
            for name, decode, lines, path, fmt in cases:
                started = time.perf_counter()
                for line in lines:
                    decode(line)
                us = (time.perf_counter() - started) / len(lines) * 1e6
                best[f"decode_{name}"] = min(best.get(f"decode_{name}", us), us)
                s = replay(
                    open_all([path]), rules, sample_directory(), io.BytesIO(), input_format=fmt
                )
                us = s.seconds / s.events * 1e6
                best[f"replay_{name}"] = min(best.get(f"replay_{name}", us), us)
    return best


if __name__ == "__main__":
    got = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
    for key, us in got.items():
        print(f"{key}: {us:.2f} us/record")
    for what in ("decode", "replay"):
        print(f"{what}: azure / frwatch = {got[f'{what}_azure'] / got[f'{what}_frwatch']:.2f}")
