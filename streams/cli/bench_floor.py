"""The Faust floor for `frwatch bench`: a minimal agent that only decodes, in its own process.

    python -m streams.cli.bench_floor BROKER TOPIC EXPECTED_RECORDS BATCH
prints one JSON line {"faust_floor_eps": ...} and exits once it has seen every record.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from typing import Any

import faust
import orjson


def main(argv: list[str]) -> int:
    """Run the minimal agent until EXPECTED_RECORDS records were decoded."""
    broker, topic, expected_text, batch_text = argv
    expected, batched = int(expected_text), int(batch_text) > 1
    app = faust.App(
        f"frwatch-floor-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{broker}",
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        autodiscover=False,
    )
    source = app.topic(topic, value_serializer="raw", key_serializer="raw")
    seen = {"n": 0, "first": 0.0}

    @app.agent(source)
    async def floor(stream: Any) -> None:
        async for value in stream:
            doc = orjson.loads(value)
            if not seen["n"]:
                seen["first"] = time.perf_counter()
            seen["n"] += len(doc["records"]) if batched else 1
            if seen["n"] >= expected:
                elapsed = time.perf_counter() - seen["first"]
                print(
                    orjson.dumps({"faust_floor_eps": round(seen["n"] / elapsed)}).decode(),
                    flush=True,
                )
                os._exit(0)  # a benchmark probe: nothing to commit or clean up

    worker = faust.Worker(app, quiet=True, loglevel="error", redirect_stdouts=False)
    worker.execute_from_commandline()
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
