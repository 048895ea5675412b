"""Allocator: glibc malloc settings for a process that measures large networks on the CPU.

A measured pass allocates and frees activation-sized blocks (megabytes) layer after layer.
glibc's defaults hurt twice:

- One malloc arena per thread: once a large block has been freed (the data's float64 copy,
  say), blocks freed by one thread are served back only from its own arena, and RSS grows with
  depth although no activation outlives its layer. Measured on a 2-core CPU, depth 200, width
  1024, batch 2048, --no-grad: peak RSS 2.8 GB with per-thread arenas, 1.1 GB (the weights plus
  one layer's tensors) with one.
- Trimming: whenever more than M_TRIM_THRESHOLD is free at the top of the heap it goes back to
  the system, and the next block of that size is faulted in again, page by page. Measured at
  depth 50, width 1024, batch 1024 on a 2-core AMD EPYC: 30,000 to 100,000 page faults per
  measured pass (0.1 to 0.3 s of system time, against a 1 s pass); with the thresholds below,
  none after the first pass. Peak memory is unchanged: freed blocks are reused, not added to.

Only the CLI (and benchmarks/run.py, on both sides of every ratio) calls `tune_malloc`: a
library caller's process keeps its own allocator settings unless it calls it too. Elsewhere
than glibc it is a no-op, and NO_TUNING_VARIABLE=1 in the environment turns it off (to compare
with glibc's defaults, or where another allocator is preloaded). Imports nothing heavy: the CLI
calls it first thing, before anything imports torch and torch starts its threads (M_ARENA_MAX
only binds threads that have not yet been given an arena).
"""

from __future__ import annotations

import ctypes
import os
import sys

# set to anything but "" or "0" to keep glibc's default malloc settings
NO_TUNING_VARIABLE = "ACTSTAT_NO_MALLOC_TUNING"

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

SETTINGS = {
    M_ARENA_MAX: 1,
    M_TRIM_THRESHOLD: 1 << 30,  # keep up to 1 GiB of freed heap for the next layers
    M_MMAP_THRESHOLD: 1 << 25,  # blocks up to 32 MiB (glibc's largest) come from the heap
}


def tune_malloc() -> bool:
    """Apply SETTINGS; True if glibc accepted all of them (False: not glibc, or turned off)."""
    if os.environ.get(NO_TUNING_VARIABLE, "") not in ("", "0"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return all(libc.mallopt(option, value) == 1 for option, value in SETTINGS.items())
    except (OSError, AttributeError):
        return False
