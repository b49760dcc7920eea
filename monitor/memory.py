"""Give freed heap memory back to the operating system (glibc), between batches.

A worker's detectors make large short-lived temporaries (a kNN block of similarities, the
features of an MMD window: tens of MB each). glibc serves an allocation above its mmap
threshold with its own mapping and unmaps it at free, but it *raises* that threshold to the
size of every such block freed (up to 32 MB), so the following temporaries come from the heap
and the per-thread arenas, and stay resident after they are freed. Measured on a worker with
10 models (``benchmarks/results/monitor_memory.md``): RSS grew from 673 MB after loading to
868 MB after 20,000 records, ~150 MB of it freed memory the process kept.

:func:`release_free_memory` (``malloc_trim(0)``) returns free heap pages of every arena; the
worker calls it after each checkpoint (every ``checkpoint_interval_seconds``), so the cost is
a scan of the free lists and re-faulting the pages of the next batch's temporaries, once per
interval rather than once per allocation (which is what a fixed ``MALLOC_MMAP_THRESHOLD_``
would cost). Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC = lib if hasattr(lib, "malloc_trim") else False
        except OSError:
            _LIBC = False
    return _LIBC


def release_free_memory() -> bool:
    """``malloc_trim(0)`` where glibc provides it; True when memory was returned."""
    lib = _libc()
    if not lib:
        return False
    return bool(lib.malloc_trim(0))
