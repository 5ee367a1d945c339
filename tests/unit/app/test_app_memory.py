"""glibc's mmap threshold, pinned: a freed fetch-sized buffer goes back to the OS, even after a
bigger one was freed (which raises glibc's dynamic threshold when it is not pinned)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streams.app.memory import pin_mmap_threshold

# In a fresh process: free a 16 MiB buffer (unpinned, glibc now serves up to 16 MiB from the
# heap), then hold and free a 4 MiB one; print how much of it RSS still holds after the free.
PROBE = """
import sys
from streams.app.memory import pin_mmap_threshold
def rss_kib():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
if sys.argv[1] == "pin":
    assert pin_mmap_threshold()
big = bytearray(16 << 20); big[::4096] = b"x" * len(big[::4096]); del big
before = rss_kib()
buf = bytearray(4 << 20); buf[::4096] = b"x" * len(buf[::4096])
held = rss_kib() - before
del buf
print(held, rss_kib() - before)
"""


def _probe(mode: str) -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True
    )
    held, kept = done.stdout.split()
    return int(held), int(kept)


def test_a_freed_buffer_is_returned_when_pinned_and_kept_when_not() -> None:
    held, kept = _probe("pin")
    assert held >= 3_500  # the 4 MiB were touched
    assert kept < 512  # and given back on free
    held, kept = _probe("dynamic")
    assert held >= 3_500
    assert kept >= 3_500  # glibc's own behaviour, which the pin is there to stop


def test_an_operator_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # glibc already read it at start
    assert pin_mmap_threshold() is False
