"""RFC 3339 <-> epoch milliseconds (topics.timestamps)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from topics.timestamps import (
    MAX_TS_MS,
    TimestampError,
    format_ms,
    parse_rfc3339_general_ms,
    parse_rfc3339_ms,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)


def test_max_ts_is_the_last_millisecond_of_year_9999() -> None:
    assert MAX_TS_MS == 253_402_300_799_999
    assert format_ms(MAX_TS_MS) == "9999-12-31T23:59:59.999Z"
    assert parse_rfc3339_ms("9999-12-31T23:59:59.999Z") == MAX_TS_MS


def test_format_known_values() -> None:
    assert format_ms(0) == "1970-01-01T00:00:00.000Z"
    assert format_ms(1) == "1970-01-01T00:00:00.001Z"
    assert format_ms(1_794_985_200_000) == "2026-11-18T07:00:00.000Z"
    assert format_ms(951_782_400_000) == "2000-02-29T00:00:00.000Z"


@given(st.integers(0, MAX_TS_MS))
def test_format_then_parse_round_trips(ms: int) -> None:
    text = format_ms(ms)
    assert len(text) == 24
    assert parse_rfc3339_ms(text) == ms


YEAR_0000_MS = -62_167_219_200_000  # 0000-01-01T00:00:00.000Z: strings reach below 1970


@given(st.integers(YEAR_0000_MS, -1))
def test_round_trip_before_1970_down_to_year_0000(ms: int) -> None:
    assert parse_rfc3339_ms(format_ms(ms)) == ms


@pytest.mark.parametrize(
    "text",
    ["0000-01-01T00:00:00.000Z", "0000-02-28T12:00:00.000Z", "0000-02-29T23:59:59.999Z",
     "0000-03-01T00:00:00.000Z", "0001-01-01T00:00:00.000Z", "1969-12-31T23:59:59.999Z"],
)  # fmt: skip
def test_early_dates_format_back_to_themselves(text: str) -> None:
    assert format_ms(parse_rfc3339_ms(text)) == text
    assert parse_rfc3339_ms("0000-01-01T00:00:00Z") == YEAR_0000_MS


@given(st.integers(0, MAX_TS_MS))
def test_format_agrees_with_datetime(ms: int) -> None:
    dt = EPOCH + ms * MS
    want = f"{dt.year:04d}-" + dt.strftime("%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    assert format_ms(ms) == want


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(-23 * 60 - 59, 23 * 60 + 59),
)
def test_parse_agrees_with_datetime_for_any_offset(naive: datetime, offset_min: int) -> None:
    dt = naive.replace(tzinfo=timezone(timedelta(minutes=offset_min)))
    sign = "-" if offset_min < 0 else "+"
    hh, mm = divmod(abs(offset_min), 60)
    text = f"{naive.year:04d}-" + naive.strftime("%m-%dT%H:%M:%S")  # %Y does not pad on glibc
    text += f".{naive.microsecond:06d}{sign}{hh:02d}:{mm:02d}"
    # floor division truncates toward the past: the same as dropping the sub-ms digits
    assert parse_rfc3339_ms(text) == (dt - EPOCH) // MS


@pytest.mark.parametrize(
    ("date", "valid"),
    [
        ("2024-02-29", True),
        ("2000-02-29", True),
        ("1600-02-29", True),
        ("0000-02-29", True),
        ("2023-02-29", False),
        ("2100-02-29", False),
        ("1900-02-29", False),
        ("2024-02-30", False),
        ("2024-04-31", False),
        ("2024-12-31", True),
        ("2024-01-31", True),
    ],
)
def test_days_of_the_month_and_leap_years(date: str, valid: bool) -> None:
    text = date + "T00:00:00Z"
    if valid:
        assert format_ms(parse_rfc3339_ms(text)) == date + "T00:00:00.000Z"
    else:
        with pytest.raises(TimestampError) as err:
            parse_rfc3339_ms(text)
        assert err.value.kind == "range"


@pytest.mark.parametrize(("year", "days"), [(2023, 1), (2024, 2), (2000, 2), (1900, 1), (2100, 1)])
def test_leap_day_lengthens_february(year: int, days: int) -> None:
    gap = parse_rfc3339_ms(f"{year}-03-01T00:00:00Z") - parse_rfc3339_ms(f"{year}-02-28T00:00:00Z")
    assert gap == days * 86_400_000


@given(st.integers(1970, 9999))
def test_year_length(year: int) -> None:
    gap = parse_rfc3339_ms(f"{year + 1:04d}-01-01T00:00:00Z") if year < 9999 else MAX_TS_MS + 1
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    assert (
        gap - parse_rfc3339_ms(f"{year:04d}-01-01T00:00:00Z") == (366 if leap else 365) * 86_400_000
    )


@pytest.mark.parametrize(
    ("frac", "ms"),
    [("", 0), (".0", 0), (".9", 900), (".99", 990), (".999", 999), (".9999", 999),
     (".999999999999", 999), (".0009", 0), (".5", 500), (".1234", 123)],
)  # fmt: skip
def test_fraction_is_truncated_to_milliseconds(frac: str, ms: int) -> None:
    assert parse_rfc3339_ms(f"2026-11-18T07:00:00{frac}Z") == 1_794_985_200_000 + ms


def test_case_of_t_and_z_does_not_matter() -> None:
    values = {
        parse_rfc3339_ms(s)
        for s in (
            "2026-11-18T07:00:00Z",
            "2026-11-18t07:00:00Z",
            "2026-11-18T07:00:00z",
            "2026-11-18t07:00:00z",
        )
    }
    assert values == {1_794_985_200_000}


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-18T07:00:00",
        "2026-11-18T07:00:00.000",
        "2026-11-18 07:00:00Z",
        "2026-11-18T07:00Z",
        "2026-11-18T07:00:00+01",
        "2026-11-18T07:00:00+0100",
        "2026-11-18T07:00:00GMT",
        "\u0662\u0660\u0662\u0666-11-18T07:00:00Z",
        "2026-11-18T07:00:00Z\n",
        "",
    ],
)
def test_wrong_form_is_a_form_error(text: str) -> None:
    with pytest.raises(TimestampError) as err:
        parse_rfc3339_ms(text)
    assert err.value.kind == "form"
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    "text",
    [
        "2026-13-01T00:00:00Z",
        "2026-00-10T00:00:00Z",
        "2026-01-00T00:00:00Z",
        "2026-11-18T24:00:00Z",
        "2026-11-18T23:60:00Z",
        "2026-11-18T23:59:61Z",
        "2026-11-18T23:59:59+24:00",
        "2026-11-18T23:59:59+00:60",
    ],
)
def test_impossible_time_is_a_range_error(text: str) -> None:
    with pytest.raises(TimestampError) as err:
        parse_rfc3339_ms(text)
    assert err.value.kind == "range"


def test_leap_second_folds_into_the_next_second() -> None:
    assert parse_rfc3339_ms("2016-12-31T23:59:60.5Z") == parse_rfc3339_ms(
        "2017-01-01T00:00:00.500Z"
    )


def test_offsets() -> None:
    utc = parse_rfc3339_ms("2026-11-18T07:00:00Z")
    assert parse_rfc3339_ms("2026-11-18T08:00:00+01:00") == utc
    assert parse_rfc3339_ms("2026-11-18T01:30:00-05:30") == utc
    assert parse_rfc3339_ms("2026-11-18T07:00:00-00:00") == utc
    assert parse_rfc3339_ms("2026-11-19T06:59:00+23:59") == utc
    assert parse_rfc3339_ms("1970-01-01T00:00:00+00:01") == -60_000


def _outcome(parse: Any, text: str) -> tuple[str, Any]:
    try:
        return ("ms", parse(text))
    except TimestampError as exc:
        return (exc.kind, None)


@given(
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31)),
    st.sampled_from(["T", "t"]),
    st.text(alphabet="0123456789.:Zz+-٢ ", max_size=12),
)
def test_the_fast_path_agrees_with_the_regex(when: datetime, t: str, tail: str) -> None:
    """A minute seen before takes the fast path; whatever follows, both parse it alike."""
    minute = when.strftime(f"%Y-%m-%d{t}%H:%M")
    parse_rfc3339_ms(minute + ":00Z")  # now the fast path knows the minute
    for text in (minute + tail, minute + ":" + tail, minute + ":59" + tail):
        assert _outcome(parse_rfc3339_ms, text) == _outcome(parse_rfc3339_general_ms, text)


@given(
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30)),
    st.sampled_from(["T", "t"]),
    st.sampled_from(["+01:00", "-05:30", "+00:00", "-00:00", "+23:59", "-23:59", "+05:45"]),
    st.text(alphabet="0123456789.:Zz+-٢ ", max_size=12),
    st.sampled_from(["+01:00", "-05:30", "+24:00", "+01:60", "+0100", "Z", "", "+01:00Z"]),
)
def test_the_fast_path_with_offsets_agrees_with_the_regex(
    when: datetime, t: str, offset: str, tail: str, other: str
) -> None:
    """A minute and offset seen before take the fast path; both parse what follows alike."""
    minute = when.strftime(f"%Y-%m-%d{t}%H:%M")
    parse_rfc3339_ms(minute + ":00" + offset)  # now the fast path knows minute and offset
    for text in (
        minute + tail + offset,
        minute + ":" + tail + offset,
        minute + ":59" + tail + offset,
        minute + ":30.5" + other,
        minute + ":60.999999" + offset,
    ):
        assert _outcome(parse_rfc3339_ms, text) == _outcome(parse_rfc3339_general_ms, text)


@given(st.integers(0, 253_402_300_799_999), st.sampled_from([3, 6, 7, 9]), st.integers(-1439, 1439))
def test_a_cached_minute_with_an_offset_gives_the_general_answer(
    ms: int, digits: int, offset_min: int
) -> None:
    sign = "-" if offset_min < 0 else "+"
    off = f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    local_ms = ms + offset_min * 60_000
    if not 0 <= local_ms <= MAX_TS_MS:
        return
    local = format_ms(local_ms)[:19]
    text = f"{local}.{ms % 1000:03d}{'7' * (digits - 3)}{off}"
    for _ in range(2):  # the first parse fills the cache, the second takes the fast path
        assert _outcome(parse_rfc3339_ms, text) == _outcome(parse_rfc3339_general_ms, text)
