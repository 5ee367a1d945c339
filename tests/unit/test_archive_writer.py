"""The archive writer: files complete before commit, the restart trap, bounds, retention."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from streams.archive import ArchiveError, iter_lines
from streams.archive_layout import archived_files, hour_dir_name, parse_temp_name
from streams.archive_writer import DAY_MS, ArchiveConfig, ArchiveWriter
from streams.replay import open_all

H = 3_600_000
T0 = 1_795_000_000_000 - 1_795_000_000_000 % H  # an hour start


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def writer(root: Path, **kw: object) -> ArchiveWriter:
    w = ArchiveWriter(
        ArchiveConfig(root=root, topic="api.requests", **kw), Clock(), pid=os.getpid()
    )  # type: ignore[arg-type]
    w.prepare()
    return w


def messages_in(root: Path) -> list[bytes]:
    return [v for name, fh in open_all([str(root)]) for _, v in iter_lines(name, fh)]


def temps(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if parse_temp_name(p.name) is not None]


def test_offsets_are_committable_only_once_the_file_is_complete(tmp_path: Path) -> None:
    w = writer(tmp_path / "a")
    for off in range(5):
        w.add(0, off, T0 + off, f"m{off}".encode())
    w.flush()
    assert w.commits() == {}
    assert archived_files(tmp_path / "a") == []  # only the temp file so far
    assert len(temps(tmp_path / "a")) == 1
    w.complete_all()
    assert w.commits() == {0: 5}
    assert temps(tmp_path / "a") == []
    assert messages_in(tmp_path / "a") == [f"m{i}".encode() for i in range(5)]
    # gzip members are deterministic: no name, no mtime
    (f,) = archived_files(tmp_path / "a")
    assert gzip.decompress(f.path.read_bytes()).count(b"\n") == 5


def test_files_are_cut_at_the_hour_and_at_the_bounds(tmp_path: Path) -> None:
    w = writer(tmp_path / "a", max_file_bytes=1024, max_file_seconds=10.0)
    assert isinstance(w.clock, Clock)
    w.add(0, 0, T0 + H - 1, b"x" * 10)
    w.add(0, 1, T0 + H, b"y" * 10)  # the next hour: the first file is complete
    assert w.commits() == {0: 1}
    for off in range(2, 200):
        w.add(0, off, T0 + H + off, b"z" * 100)  # ~10 lines a file
    w.flush()
    assert set(w.commits()) == {0}
    assert len(archived_files(tmp_path / "a")) >= 15  # 1 KiB of lines a file
    w.add(1, 0, T0 + H, b"p1")
    w.clock.now = 9.0
    w.complete_due()
    assert w.commits() == {}
    w.clock.now = 10.0
    w.complete_due()  # open for 10 s: complete, so that the commit advances
    assert w.commits() == {1: 1} and not w.open
    files = archived_files(tmp_path / "a")
    assert [hour_dir_name(f.hour_ms) for f in files][:1] == [hour_dir_name(T0)]
    assert len(messages_in(tmp_path / "a")) == 201


def test_a_restart_that_cuts_elsewhere_leaves_no_message_twice(tmp_path: Path) -> None:
    """The trap: files complete (renamed) but their offsets never committed, then a crash;
    the next run reads from the committed offset and cuts its files at other offsets."""
    root = tmp_path / "a"
    first = writer(root, max_file_bytes=1024)
    for off in range(100):
        first.add(0, off, T0, f"message-{off:03d}".encode() + b"." * 90)
    first.flush()
    # the run committed up to its first complete file only, then was killed (-9) with
    # several more complete files and an open temp file
    files_before = archived_files(root)
    assert len(files_before) >= 5 and temps(root)
    committed = files_before[1].first_offset  # its first file was committed
    first.open.clear()  # killed: nothing more is closed or cleaned
    second = writer(root, max_file_bytes=4096)  # other bounds: other cuts
    assert second.remove_dead_temps(lambda pid: False) == 0  # our own pid: left to the partition
    for off in range(committed, 100):
        second.add(0, off, T0, f"message-{off:03d}".encode() + b"." * 90)
    second.complete_all()
    got = messages_in(root)
    assert got == [f"message-{off:03d}".encode() + b"." * 90 for off in range(100)]
    assert temps(root) == []
    assert second.removed_on_restart == len(files_before) - 1


def test_temp_files_of_dead_writers_are_removed_at_start(tmp_path: Path) -> None:
    root = tmp_path / "a"
    dead = ArchiveWriter(ArchiveConfig(root=root, topic="t"), Clock(), pid=999_999)
    dead.prepare()
    dead.add(2, 0, T0, b"half")
    dead.flush()
    assert len(temps(root)) == 1
    live = ArchiveWriter(ArchiveConfig(root=root, topic="t"), Clock(), pid=1)
    assert live.remove_dead_temps(lambda pid: pid != 999_999) == 1
    assert temps(root) == []


def test_an_archive_of_another_topic_is_refused(tmp_path: Path) -> None:
    writer(tmp_path / "a")
    other = ArchiveWriter(ArchiveConfig(root=tmp_path / "a", topic="other"), Clock())
    with pytest.raises(ArchiveError, match=r"archives topic 'api\.requests', not 'other'"):
        other.prepare()


def test_retention_removes_hours_older_than_keep_days(tmp_path: Path) -> None:
    root = tmp_path / "a"
    w = writer(root, keep_days=2)
    for i, hour in enumerate([T0, T0 + H, T0 + 2 * DAY_MS, T0 + 3 * DAY_MS]):
        w.add(0, i, hour, b"v")
        w.complete_all()
    now = T0 + 2 * DAY_MS + H + 1  # the first hour ended 2 days and 1 ms ago
    gone = w.remove_expired(now)
    assert [p.name for p in gone] == [hour_dir_name(T0)]
    assert messages_in(root) == [b"v"] * 3
    # an hour with a file still open is never removed
    w.add(1, 0, T0 + H, b"open")
    assert w.remove_expired(T0 + 30 * DAY_MS) == [
        root / hour_dir_name(T0 + 2 * DAY_MS),
        root / hour_dir_name(T0 + 3 * DAY_MS),
    ]
    assert (root / hour_dir_name(T0 + H)).is_dir()
    w.complete_all()
    assert messages_in(root) == [b"v", b"open"]
    # without --keep-days nothing is removed
    assert writer(tmp_path / "b").remove_expired(T0 + 999 * DAY_MS) == []
