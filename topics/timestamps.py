"""RFC 3339 <-> integer epoch milliseconds, done once at the edge."""

from __future__ import annotations

import re

MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z

# re.ASCII: `\d` must not match other scripts' digits (int() would accept "٢٠٢٦")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z",
    re.ASCII,
)
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class TimestampError(ValueError):
    """A date-time string that is not RFC 3339 (`form`) or names an impossible time (`range`)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind  # "form" or "range"


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm)."""
    y -= m <= 2
    # Python's // already floors: the C++ original's `y - 399` adjustment would double-count
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _is_leap(y: int) -> bool:
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


#: epoch seconds of the minutes seen lately, by their text: `YYYY-MM-DDTHH:MM` for UTC
#: (`...Z`), `YYYY-MM-DDTHH:MM+HH:MM` (the offset appended) for the others: a log's records
#: share their minute, and mostly their offset, with thousands of others
_MINUTES: dict[str, int] = {}
_MINUTES_MAX = 4096


def parse_rfc3339_ms(text: str) -> int:
    """Epoch milliseconds of an RFC 3339 string with an offset; fractions are truncated.

    A string whose minute (and offset) was parsed before takes a path without the regex:
    only its seconds and fraction are left to check; it accepts and refuses exactly what
    `parse_rfc3339_general_ms` does (property-tested).
    """
    n = len(text)
    if n >= 20 and text[16] == ":":
        if text[-1] in "Zz":
            minute = _MINUTES.get(text[:16])
            end = n - 1
        else:
            minute = _MINUTES.get(text[:16] + text[-6:])
            end = n - 6
        if minute is not None:
            sec = text[17:19]
            if sec.isascii() and sec.isdigit() and (s := int(sec)) <= 60:
                if end == 19:
                    return (minute + s) * 1000
                frac = text[20:end]
                if text[19] == "." and frac and frac.isascii() and frac.isdigit():
                    return (minute + s) * 1000 + int((frac + "00")[:3])
    return parse_rfc3339_general_ms(text)


def parse_rfc3339_general_ms(text: str) -> int:
    """`parse_rfc3339_ms` by the regex: every form RFC 3339 allows here, offsets included."""
    m = _RFC3339.match(text)
    if m is None:
        raise TimestampError(
            "form", "not an RFC 3339 date-time with offset (YYYY-MM-DDTHH:MM:SS[.f]Z|±HH:MM)"
        )
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if not 1 <= month <= 12:
        raise TimestampError("range", f"month {month} out of range")
    dim = 29 if month == 2 and _is_leap(year) else _DAYS_IN_MONTH[month - 1]
    if not 1 <= day <= dim:
        raise TimestampError("range", f"day {day} out of range for {year:04d}-{month:02d}")
    # RFC 3339 allows a leap second (:60); it is folded into the next second.
    if hour > 23 or minute > 59 or second > 60:
        raise TimestampError("range", "time of day out of range")
    frac = m.group(7)
    millis = int((frac + "00")[:3]) if frac else 0
    offset_min = 0
    if m.group(9):
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            raise TimestampError("range", "UTC offset out of range")
        offset_min = oh * 60 + om
        if m.group(9) == "-":
            offset_min = -offset_min
    days = _days_from_civil(year, month, day)
    # a valid minute and offset: the fast path knows them from now on
    if len(_MINUTES) >= _MINUTES_MAX:
        _MINUTES.clear()
    minute_secs = days * 86400 + hour * 3600 + minute * 60 - offset_min * 60
    _MINUTES[text[:16] if m.group(8) else text[:16] + text[-6:]] = minute_secs
    return (minute_secs + second) * 1000 + millis


def format_ms(ts_ms: int) -> str:
    """RFC 3339 UTC with milliseconds and `Z`, e.g. 2026-11-18T07:00:00.000Z."""
    days, rem = divmod(ts_ms, 86_400_000)
    # civil_from_days (Hinnant)
    z = days + 719468
    era = z // 146097  # floor division, as above
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y += m <= 2
    hh, rem = divmod(rem, 3_600_000)
    mm, rem = divmod(rem, 60_000)
    ss, ms = divmod(rem, 1000)
    return f"{y:04d}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}.{ms:03d}Z"
