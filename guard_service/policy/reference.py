"""The benign reference prompts every compiled version is previewed against (frontend/preview.py), shipped as
guard_service/data/reference_prompts.jsonl (built by `bench/reference_set.py`: retain and neighbour questions
of the shared benchmarks, general questions in ten languages with namesakes among them). One owner of the
format; nothing heavy imported, so the evaluation harness and the benches read it too."""

from __future__ import annotations

import functools
import json
from importlib import resources


@functools.cache
def reference() -> tuple[tuple[str, str], ...]:
    """(text, subset) of every reference prompt; subsets: tofu-retain, tofu-real-authors, tofu-world-facts,
    rwku-neighbour, general-<language>."""
    lines = resources.files("guard_service.data").joinpath("reference_prompts.jsonl").read_text().splitlines()
    return tuple((row["text"], row["set"]) for row in map(json.loads, filter(None, lines)))
