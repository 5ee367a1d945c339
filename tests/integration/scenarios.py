"""Archives for live tests: the eight scenarios with redeliveries, malformed lines, disorder."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson

from streams.synthetic import DEFAULT_START_MS, HOUR_MS, SAMPLE_ACCOUNTS, demo_traffic

MALFORMED_LINES = [
    b"this is not json",
    b"[1, 2, 3]",
    b'{"ts": 1795000000000, "account_id": "acct-x", "operation": "face.identify"}',
    b'{"event_id": "bad-1", "ts": true, "account_id": "acct-x", "operation": "face.identify"}',
    b'{"event_id": "bad-2", "ts": 1795000000000, "account_id": "acct-x", "operation": "face.identify", "image_count": -1}',
    b'{"records": "nope"}',
    b'{"records": [{"event_id": "bad-3"}, 7]}',
]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Rows (dicts, or raw bytes lines) as JSON lines."""
    with open(path, "wb") as fh:
        for row in rows:
            fh.write((row if isinstance(row, bytes) else orjson.dumps(row)) + b"\n")
    return path


def scenario_archive(tmp: Path, hours: int = 2, seed: int = 3) -> tuple[Path, Path]:
    """accounts.jsonl and events.jsonl with every scenario in each of `hours` hours."""
    rng = random.Random(seed)
    events: list[Any] = []
    for h in range(hours):
        batch = list(demo_traffic(seed + h, DEFAULT_START_MS + h * HOUR_MS, 120))
        events.extend(batch)
    # redeliveries: exact copies, and copies with new subject ids, after their originals
    originals = [e for e in events if isinstance(e, dict) and e["operation"] != "embeddings"]
    for e in rng.sample(originals, 40):
        copy = dict(e)
        if rng.random() < 0.5:
            copy["subject_ids"] = [f"subj-new-{rng.randrange(10_000)}"]
        events.insert(min(len(events), events.index(e) + rng.randrange(1, 50)), copy)
    # a batch line inside the archive, and malformed lines of every kind
    batch_line = {"records": [events.pop(), events.pop(), events.pop()]}
    events.insert(10, batch_line)
    for i, line in enumerate(MALFORMED_LINES):
        events.insert(25 + i * 97, line)
    accounts = [
        *SAMPLE_ACCOUNTS,
        {"account_id": "acct-bad", "sector": "police"},  # rejected: not a sector
        {"account_id": "acct-uni", "deleted": True},
    ]  # removes an account
    return (
        write_jsonl(tmp / "accounts.jsonl", accounts),
        write_jsonl(tmp / "events.jsonl", events),
    )
