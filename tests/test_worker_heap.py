"""The worker's heap trim gives freed memory back that glibc would keep (guard_service/worker/heap.py)."""

from __future__ import annotations

import ctypes
import time

import psutil
import pytest

from guard_service.worker.heap import HeapTrimmer

CHUNK = 64 * 1024  # under glibc's mmap threshold: these come from the heap, as a step's small tensors do
CHUNKS = 3200  # 200 MiB, half of it freed


def test_a_due_trim_returns_a_fragmented_heap_to_the_os() -> None:
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "malloc_trim"):
        pytest.skip("not glibc: no malloc_trim")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    rss = psutil.Process().memory_info
    chunks = [libc.malloc(CHUNK) for _ in range(CHUNKS)]
    for c in chunks:
        ctypes.memset(c, 1, CHUNK)  # resident
    for c in chunks[::2]:  # holes between live chunks: glibc keeps them (only the heap's top shrinks on its own)
        libc.free(c)
    freed_but_kept = rss().rss
    trimmer = HeapTrimmer(every_s=0.05)
    trimmer.maybe()  # not due yet: nothing happens
    assert rss().rss > freed_but_kept - 20 * 2**20
    time.sleep(0.1)
    trimmer.maybe()
    after = rss().rss
    for c in chunks[1::2]:
        libc.free(c)
    print(f"RSS {freed_but_kept / 2**20:.0f} MiB -> {after / 2**20:.0f} MiB after the trim")
    assert freed_but_kept - after > 60 * 2**20  # of 100 MiB in holes
