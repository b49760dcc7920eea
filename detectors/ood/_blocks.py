"""Row-block execution shared by the embedding detectors.

Scoring is split into row blocks that each fit in cache. With more than one block and more
than one core, blocks run in a thread pool, each block's BLAS product single-threaded: numpy
releases the GIL in BLAS and in ``partition``, and on a shared machine independent
single-threaded products beat a multi-threaded product per block (whose threads wait for each
other at every call) by about 2x. The single-thread limit needs threadpoolctl; without it the
blocks run one after the other with BLAS's own threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

_CONTROLLER: Any = None


def n_cpus() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def single_threaded_blas() -> Any:
    """Context manager limiting BLAS to one thread, or ``None`` without threadpoolctl.

    The limit is process-wide while it holds (that is how OpenBLAS works); it lasts one call.
    """
    global _CONTROLLER
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()  # scans the loaded libraries once (~1 ms)
    return _CONTROLLER.limit(limits=1, user_api="blas")


def run_blocks(fn: Callable[[int, int], None], n: int, rows: int, n_jobs: int | None) -> None:
    """Call ``fn(lo, hi)`` on consecutive row blocks of at most ``rows`` covering ``range(n)``."""
    rows = max(1, rows)
    jobs = max(1, n_jobs or n_cpus())
    n_blocks = -(-n // rows)
    if 1 < n_blocks < 4 * jobs:  # few blocks: even them out so that no thread idles at the end
        n_blocks = -(-n_blocks // jobs) * jobs
        rows = -(-n // n_blocks)
    starts = range(0, n, rows)
    jobs = min(jobs, len(starts))
    limit = single_threaded_blas() if jobs > 1 else None
    if limit is None:
        for lo in starts:
            fn(lo, min(n, lo + rows))
        return
    with limit, ThreadPoolExecutor(jobs) as pool:
        for f in [pool.submit(fn, lo, min(n, lo + rows)) for lo in starts]:
            f.result()
