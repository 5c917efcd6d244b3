"""Hand the engine worker's freed heap back to the OS now and then.

Every step frees tensors and lists of a different size (batch shapes, row guards, policies loaded and dropped
under churn); glibc keeps what was freed inside its arenas, and fragmentation stops it giving the pages back on
its own. The soak measured the worker's RSS climbing 35-50 MB a minute that way, and one `malloc_trim(0)` took
its heap back to the start-up level (what grew after that was oneDNN's kernel cache: see cli.py). Where the C
library has no `malloc_trim` (musl) this does nothing; under another allocator (jemalloc, tcmalloc) it is a no-op.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable

from guard_service.metrics import definitions as metrics

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None


class HeapTrimmer:
    def __init__(self, every_s: float):
        """`every_s`: at most one trim this often (0: never). A trim of this worker's heap takes milliseconds
        inside a step (`guard_worker_heap_trim_seconds`)."""
        self.every_s = every_s
        self._trim = _malloc_trim() if every_s > 0 else None
        self._last = time.monotonic()

    def maybe(self) -> None:
        """Called every engine step: a clock read unless one is due."""
        if self._trim is None or time.monotonic() - self._last < self.every_s:
            return
        began = time.perf_counter()
        self._last = time.monotonic()
        try:  # inside the engine step: nothing may raise out of it
            self._trim(0)
            metrics.HEAP_TRIM_SECONDS.observe(time.perf_counter() - began)
        except Exception:
            log.exception("guard: cannot trim the worker's heap; not trying again")
            self._trim = None
