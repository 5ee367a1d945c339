"""Window maths on integer epoch milliseconds: tumbling windows aligned to the Unix epoch."""

from __future__ import annotations

import re

RETENTION_MS = 24 * 3_600_000  # window state outlives the window's end by this much event time

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"([1-9][0-9]*)(ms|s|m|h|d)\Z")


def parse_duration_ms(text: str) -> int:
    """`90s`, `30m`, `1h`, `1d` -> milliseconds; ValueError otherwise."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a duration like 30m, 1h or 1d")
    return int(m.group(1)) * _UNITS[m.group(2)]


def window_start(ts_ms: int, size_ms: int) -> int:
    """Start of the window of size `size_ms` that holds `ts_ms`: floor(ts / size) * size."""
    return ts_ms - ts_ms % size_ms


def is_expired(window_end_ms: int, watermark_ms: int) -> bool:
    """A window's state may be dropped once event time is more than 24h past its end."""
    return watermark_ms - window_end_ms > RETENTION_MS
