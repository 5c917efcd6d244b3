"""Readers for the benchmark data under `../shared/data` (see its MANIFEST.md): one place knows the file quirks."""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

from guard_service.policy.forbidden import salient_phrases

# The repository sits beside `shared/`; GUARD_BENCHMARK_DATA or --data overrides it.
DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

# TOFU as this project uses it (the fixtures are trained on it, the evaluation asks it): forget05 (10 fictitious
# authors x 20 QA) plus an equal retain subset (the first 10 authors of the retain_perturbed eval split). The
# retain-only twin sees the same retain subset, same recipe: TOFU's forget quality compares truth ratios on the
# forget set against exactly such a never-saw-it model.
TOFU_FORGET_SPLIT = "forget05_perturbed.json"
TOFU_RETAIN_SPLIT = "retain_perturbed.json"
TOFU_RETAIN_SUBSET = 200


def read_json(path: Path) -> list:
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:  # full.json / retain9x.json: one array per line; *_perturbed: one row per line
        rows: list = []
        for line in filter(str.strip, text.splitlines()):
            value = json.loads(line)
            rows += value if isinstance(value, list) else [value]
        return rows


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


_NAMED = re.compile(r"(?:full name is|is named|name is) ([A-Z][\w.'-]+(?: [A-Z][\w.'-]+)+)")
TOFU_QA_PER_AUTHOR = 20


def tofu_authors(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """TOFU splits are authors x 20 QA in order; the name is what "full name is X" says, else the most frequent
    multi-word name in the questions."""
    out = []
    for i in range(0, len(rows), TOFU_QA_PER_AUTHOR):
        chunk = rows[i:i + TOFU_QA_PER_AUTHOR]
        named = [m.group(1).rstrip(".") for r in chunk if (m := _NAMED.search(r["answer"]))]
        counts = collections.Counter(p.removesuffix("'s") for r in chunk for p in salient_phrases(r["question"])
                                     if len(p.split()) >= 2)
        out.append((named[0] if named else counts.most_common(1)[0][0], chunk))
    return out


def tofu(data: Path, name: str) -> list[dict]:
    return read_json(data / "tofu" / name)


BUNDLED = Path(__file__).resolve().parent / "data"


def bundled(name: str) -> dict:
    """Evaluation inputs written for this project (policy specs, probes): shipped with the package."""
    return json.loads((BUNDLED / name).read_text())


def familiarity_prompts(path: Path) -> list[dict]:
    """WHP-style familiarity sets: [{"prompt": {"prompt": ..., "references": [...]}}]."""
    return [row["prompt"] for row in json.loads(path.read_text())]
