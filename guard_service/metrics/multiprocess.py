"""Counts made in vLLM's worker process (the logits processor) must reach `/metrics` of the API process.

prometheus_client's multiprocess mode does that through memory-mapped files in PROMETHEUS_MULTIPROC_DIR: every
process writes its own file, the API process aggregates them on scrape. The variable must be set before
prometheus_client is first imported anywhere (vLLM imports it early), so `guard-service serve` calls
`prepare()` first thing; the worker inherits it from the environment.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(directory: Path | None = None) -> Path:
    """Create (and empty: stale files would add old counts) the shared metrics directory; export it."""
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="guard-metrics-"))
    elif directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(directory)
    return directory


def enabled() -> bool:
    return bool(os.environ.get(ENV))
