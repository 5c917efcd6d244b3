"""Files shipped inside PyPI packages (the embedded model, the sentence embedder): found, never downloaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (pip install {pip_name})")
    return Path(next(iter(spec.submodule_search_locations)))
