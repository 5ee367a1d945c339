"""Window maths on integer epoch milliseconds (SPEC 4.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.windows import RETENTION_MS, is_expired, parse_duration_ms, window_start
from topics.timestamps import format_ms, parse_rfc3339_ms

HOUR = 3_600_000
DAY = 86_400_000


def ms(text: str) -> int:
    return parse_rfc3339_ms(text)


@pytest.mark.parametrize(
    ("ts", "size", "start"),
    [
        (0, HOUR, 0),
        (HOUR - 1, HOUR, 0),
        (HOUR, HOUR, HOUR),
        (1_795_000_000_000, HOUR, 1_794_999_600_000),
        (ms("2026-11-18T07:06:40Z"), HOUR, ms("2026-11-18T07:00:00Z")),
        (ms("2026-11-18T07:59:59.999Z"), HOUR, ms("2026-11-18T07:00:00Z")),
        (ms("2026-11-18T08:00:00Z"), HOUR, ms("2026-11-18T08:00:00Z")),
        (ms("2026-11-18T23:59:59.999Z"), DAY, ms("2026-11-18T00:00:00Z")),
        (ms("2026-11-19T00:00:00Z"), DAY, ms("2026-11-19T00:00:00Z")),
        # a local time east of UTC still lands in the UTC day
        (ms("2026-11-19T01:30:00+02:00"), DAY, ms("2026-11-18T00:00:00Z")),
        (ms("2026-11-18T07:44:59Z"), 30 * 60_000, ms("2026-11-18T07:30:00Z")),
        (ms("2024-02-29T12:00:00Z"), DAY, ms("2024-02-29T00:00:00Z")),
    ],
)
def test_window_start_is_epoch_aligned(ts: int, size: int, start: int) -> None:
    assert window_start(ts, size) == start


def test_hour_windows_start_on_the_hour_and_day_windows_at_midnight_utc() -> None:
    assert format_ms(window_start(ms("2026-11-18T07:06:40.123Z"), HOUR)) == (
        "2026-11-18T07:00:00.000Z"
    )
    assert format_ms(window_start(ms("2026-11-18T07:06:40.123Z"), DAY)) == (
        "2026-11-18T00:00:00.000Z"
    )


@given(st.integers(0, 253_402_300_799_999), st.sampled_from([1, 1000, 60_000, HOUR, DAY, 7 * DAY]))
def test_window_holds_its_timestamp(ts: int, size: int) -> None:
    start = window_start(ts, size)
    assert start % size == 0
    assert start <= ts < start + size


@pytest.mark.parametrize(
    ("text", "ms_"),
    [
        ("1ms", 1),
        ("250ms", 250),
        ("90s", 90_000),
        ("30m", 1_800_000),
        ("1h", HOUR),
        ("24h", DAY),
        ("1d", DAY),
        ("7d", 7 * DAY),
    ],
)
def test_parse_duration(text: str, ms_: int) -> None:
    assert parse_duration_ms(text) == ms_


@pytest.mark.parametrize(
    "text",
    ["1 hour", "1 h", "0h", "01h", "h", "1", "", "1H", "1w", "-1h", "1.5h", "1h ", " 1h", "1h30m"],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_ms(text)


def test_expiry_is_strictly_more_than_24h_past_the_end() -> None:
    end = ms("2026-11-18T08:00:00Z")
    assert RETENTION_MS == DAY
    assert not is_expired(end, end)
    assert not is_expired(end, end + DAY - 1)
    assert not is_expired(end, end + DAY)
    assert is_expired(end, end + DAY + 1)
    assert not is_expired(end, end - HOUR)  # watermark behind the window
