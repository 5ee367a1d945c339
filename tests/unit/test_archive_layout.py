"""Archive directory layout: names, escape lines, the archive's reading order."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.archive import ArchiveError, iter_lines
from streams.archive_layout import (
    ESCAPE_PREFIX,
    MARKER,
    archived_files,
    escape_value,
    file_name,
    hour_dir_name,
    hour_from_name,
    hour_of,
    line_safe,
    marker_bytes,
    parse_file_name,
    parse_temp_name,
    temp_name,
    unescape_line,
)
from streams.replay import open_all

H = 3_600_000


def test_names_round_trip_and_sort_by_partition_then_offset() -> None:
    assert file_name(3, 12345) == "p0003-00000000000000012345.jsonl.gz"
    assert parse_file_name(file_name(3, 12345)) == (3, 12345)
    assert parse_file_name(file_name(10_000, 2**62)) == (10_000, 2**62)
    assert parse_temp_name(temp_name(3, 7, 4242)) == (3, 7, 4242)
    assert parse_file_name(temp_name(3, 7, 4242)) is None  # never read as complete
    assert parse_temp_name(file_name(3, 7)) is None
    for bad in (
        "p3-1.jsonl.gz",
        "p0003-1.jsonl.gz",
        "x.jsonl.gz",
        "p0003-00000000000000000001.jsonl",
    ):
        assert parse_file_name(bad) is None
    names = [file_name(p, o) for p, o in [(0, 9), (0, 10), (1, 2), (0, 100)]]
    assert sorted(names) == [file_name(0, 9), file_name(0, 10), file_name(0, 100), file_name(1, 2)]


def test_hours_are_utc_and_round_trip() -> None:
    ts = 1_795_000_123_456  # 2026-11-18T...
    start = hour_of(ts)
    assert start % H == 0 and start <= ts < start + H
    name = hour_dir_name(start)
    assert name == "2026-11-18T11"
    assert hour_from_name(name) == start
    assert hour_from_name("1970-01-01T00") == 0
    assert hour_from_name("2026-11-18T8") is None
    assert hour_from_name("2026-13-18T08") is None


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"   ",
        b"\t",
        b'{"event_id": "a",\n "ts": 1}',
        b'{"event_id": "a"}\r',
        b"line\r\nline",
        b"\xff\xfe not utf-8",
        ESCAPE_PREFIX + b'"e30="}',  # a value that looks like an escape line
        ESCAPE_PREFIX + b"null}",
    ],
)
def test_unsafe_values_are_escaped_and_come_back_exactly(value: bytes | None) -> None:
    line = escape_value(value)
    assert b"\n" not in line and b"\r" not in line and line.strip()
    line.decode("utf-8")
    assert line.startswith(ESCAPE_PREFIX)
    assert unescape_line(line) == value


@pytest.mark.parametrize(
    "value", [b'{"event_id":"a","ts":1}', b"not json", b'"\xc3\xa9t\xc3\xa9"', b" padded "]
)
def test_safe_values_are_their_own_line(value: bytes) -> None:
    assert line_safe(value)
    assert escape_value(value) == value
    assert unescape_line(value) == value


@given(st.one_of(st.none(), st.binary(max_size=64)))
def test_every_value_round_trips(value: bytes | None) -> None:
    line = escape_value(value)
    assert b"\n" not in line and b"\r" not in line
    assert unescape_line(line) == value


def test_a_damaged_escape_line_is_an_error() -> None:
    with pytest.raises(ValueError):
        unescape_line(ESCAPE_PREFIX + b'"not base64!"}')


def _archive(root: Path, files: dict[tuple[int, int, int], list[bytes | None]]) -> Path:
    root.mkdir()
    (root / MARKER).write_bytes(marker_bytes("api.requests"))
    for (hour, p, first), values in files.items():
        d = root / hour_dir_name(hour * H)
        d.mkdir(exist_ok=True)
        with gzip.open(d / file_name(p, first), "wb") as fh:
            for v in values:
                fh.write(escape_value(v) + b"\n")
    return root


def test_an_archive_is_read_hour_by_hour_then_partition_then_offset(tmp_path: Path) -> None:
    root = _archive(
        tmp_path / "arch",
        {
            (500_001, 1, 0): [b"h1-p1-0"],
            (500_000, 1, 5): [b"h0-p1-5"],
            (500_000, 0, 10): [b"h0-p0-10"],
            (500_000, 0, 2): [b"h0-p0-2", b"h0-p0-3"],
            (500_001, 0, 11): [b"h1-p0-11"],
            (500_000, 10, 0): [b"h0-p10-0"],
        },
    )
    # a writer at work (or one that died) leaves temp files: never read
    (root / hour_dir_name(500_000 * H) / temp_name(0, 12, 99)).write_bytes(b"partial")
    (root / "notes.txt").write_text("ignored")
    order = [(f.hour_ms // H, f.partition, f.first_offset) for f in archived_files(root)]
    assert order == [
        (500_000, 0, 2),
        (500_000, 0, 10),
        (500_000, 1, 5),
        (500_000, 10, 0),
        (500_001, 0, 11),
        (500_001, 1, 0),
    ]
    values = [v for name, fh in open_all([str(root)]) for _, v in iter_lines(name, fh)]
    assert values == [
        b"h0-p0-2",
        b"h0-p0-3",
        b"h0-p0-10",
        b"h0-p1-5",
        b"h0-p10-0",
        b"h1-p0-11",
        b"h1-p1-0",
    ]


def test_replay_reads_unsafe_values_as_they_were_sent(tmp_path: Path) -> None:
    sent: list[bytes | None] = [b'{"a":\n1}', None, b"", b"  ", b"\xff", b"ok"]
    root = _archive(tmp_path / "arch", {(500_000, 0, 0): sent})
    got = [v for name, fh in open_all([str(root)]) for _, v in iter_lines(name, fh)]
    # a null value reads as empty, as the worker reads it
    assert got == [b'{"a":\n1}', b"", b"", b"  ", b"\xff", b"ok"]
    # one file of the archive named alone is decoded too
    (one,) = archived_files(root)
    alone = [v for name, fh in open_all([str(one.path)]) for _, v in iter_lines(name, fh)]
    assert alone == got


def test_a_directory_that_is_no_archive_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not one written by frwatch archive"):
        open_all([str(tmp_path)])
    (tmp_path / MARKER).write_text("{}")
    with pytest.raises(ArchiveError, match="marker"):
        open_all([str(tmp_path)])


def test_an_archive_file_tells_replay_how_far_it_is_read(tmp_path: Path) -> None:
    from streams.replay import position_of

    root = _archive(tmp_path / "arch", {(500_000, 0, 0): [b"x" * 100] * 50})
    ((name, fh),) = open_all([str(root)])
    position = position_of(fh)
    assert position() == 0
    assert sum(1 for _ in iter_lines(name, fh)) == 50
    assert position() == Path(name).stat().st_size
