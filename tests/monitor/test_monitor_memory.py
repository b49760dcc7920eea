"""The worker gives freed heap memory back between batches (glibc's malloc_trim)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monitor import memory


def _anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status")


@pytest.mark.skipif(not memory._libc(), reason="needs glibc's malloc_trim")
def test_freed_temporaries_below_the_raised_threshold_are_returned() -> None:
    big = np.ones(30 << 17)  # 30 MB: mmap'd, and freeing it raises glibc's mmap threshold
    del big
    blocks = [np.ones(1 << 19) for _ in range(16)]  # 16 x 4 MB, now served from the heap
    del blocks[:-1]  # the last one stays: the heap's top is in use, plain trimming is stuck
    before = _anon_mb()
    assert memory.release_free_memory()
    assert _anon_mb() < before - 30  # the 60 MB freed below it went back
