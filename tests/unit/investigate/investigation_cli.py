"""Running `frwatch replay` in a subprocess for the investigation tests (no Kafka)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from streams.synthetic import SAMPLE_ACCOUNTS


@dataclass
class Result:
    code: int
    stdout: bytes
    stderr: str

    @property
    def lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.stdout.splitlines() if line.strip()]

    @property
    def summary(self) -> dict[str, Any]:
        doc: dict[str, Any] = orjson.loads(self.stderr.strip().splitlines()[-1])
        return doc

    def one_line_error(self) -> str:
        """Exit 2, nothing on stdout, exactly one line on stderr (returned)."""
        assert self.code == 2, (self.code, self.stderr)
        assert self.stdout == b""
        lines = self.stderr.strip("\n").splitlines()
        assert len(lines) == 1, self.stderr
        return lines[0]


def frwatch(*args: str | Path) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRWATCH_")}
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli.main", *map(str, args)],
        input=b"",
        capture_output=True,
        env=env,
        timeout=300,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr.decode())


def jsonl(items: list[Any]) -> bytes:
    return b"".join(orjson.dumps(i) + b"\n" for i in items)


def write_accounts(path: Path, extra: list[dict[str, Any]] = ()) -> Path:  # type: ignore[assignment]
    path.write_bytes(jsonl([*SAMPLE_ACCOUNTS, *extra]))
    return path


def latest(alerts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """alert_id -> its highest revision (alerts without `revision` are one message each)."""
    out: dict[str, dict[str, Any]] = {}
    for a in alerts:
        held = out.get(a["alert_id"])
        if held is None or a.get("revision", 0) >= held.get("revision", 0):
            out[a["alert_id"]] = a
    return out


def without_detection_time(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Alerts as comparable documents: `detected_at` is the wall clock of the run."""
    return sorted(
        ({k: v for k, v in a.items() if k != "detected_at"} for a in alerts),
        key=lambda a: (a["alert_id"], a.get("revision", 0)),
    )
