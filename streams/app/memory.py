"""Keep the worker's RSS flat under multi-MiB fetch buffers (glibc's malloc).

glibc serves allocations above its mmap threshold (128 KiB at start) with mmap and gives
them back to the OS on free. But the threshold is dynamic: each freed mmapped block raises it
to that block's size (up to 32 MiB), so after the first freed fetch response every later
response of that size comes from the heap, where freed blocks are kept and fragment.
Measured with `frwatch bench --batch 100 --events 1000000` and 4 MiB fetches: worker RSS
108-109 MiB after 100,000 events and 136-151 MiB after 1,000,000 with the dynamic threshold;
pinned at 1 MiB, 88.6 -> 91.4 and 88.5 -> 90.5 MiB. Pinning is one `mallopt` call; other C
libraries are left alone.
"""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3  # <malloc.h>
DEFAULT_MMAP_THRESHOLD = 128 * 1024  # glibc's initial value


def pin_mmap_threshold(nbytes: int = DEFAULT_MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `nbytes` (which also stops its dynamic adjustment).

    Returns whether it was set: not when MALLOC_MMAP_THRESHOLD_ is in the environment (the
    operator chose; glibc read it at start) or the C library has no working `mallopt`.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, nbytes))
