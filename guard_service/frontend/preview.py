"""Impact preview: the benign prompts a compiled version would flag, known before it is enforced.

The reference set (policy/reference.py: retain and neighbour questions of the shared benchmarks, general
questions in ten languages, namesakes among them) passes
the same prompt classifier live traffic does, with only this version loaded. The share it flags is the
version's predicted collateral; the prompts it flags, highest score first, are what an operator reads before
promoting or forcing it. A poisoned or careless request ("forget: Python", an alias like "Harry") shows up here
instead of in users' refusals. The compile scheduler records it on the version and refuses to activate one over
`GUARD_MAX_COLLATERAL` (see compiler/scheduler.py).
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel

from guard_service.embedding import EMBEDDINGS
from guard_service.frontend.classifier import classify_batch, views
from guard_service.frontend.registry import load_policy
from guard_service.policy.reference import reference

TOP = 10


class Collision(BaseModel):
    text: str
    set: str
    score: float
    reasons: list[str]


class Preview(BaseModel):
    flagged: int
    total: int
    rate: float  # flagged / total: the predicted collateral
    by_set: dict[str, list[int]]  # reference subset -> [flagged, total]
    top: list[Collision]  # the flagged prompts, highest score first
    seconds: float


def preview(policy_id: str, version: int, path: Path, stored_spec: dict, model_dir: Path | None = None) -> Preview:
    """Load the version as the registry would and classify the reference set with it alone. Blocking (files,
    embedder): call off the event loop."""
    began = time.perf_counter()
    policy = load_policy(policy_id, version, path, stored_spec, model_dir)
    refs = reference()
    results = classify_batch([[text] for text, _ in refs], [policy])
    by_set: dict[str, list[int]] = {}
    hits: list[Collision] = []
    for (text, subset), result in zip(refs, results, strict=True):
        counts = by_set.setdefault(subset, [0, 0])
        counts[1] += 1
        if result.matches:
            counts[0] += 1
            match = result.matches[0]
            hits.append(Collision(text=text, set=subset, score=round(match.score, 4),
                                  reasons=list(dict.fromkeys(match.reasons))))
    hits.sort(key=lambda c: -c.score)
    return Preview(flagged=len(hits), total=len(refs), rate=round(len(hits) / max(1, len(refs)), 4), by_set=by_set,
                   top=hits[:TOP], seconds=round(time.perf_counter() - began, 3))


class ImpactPreview:
    """What the compile scheduler calls (compiler/scheduler.py `Previewer`): the preview as a plain dict."""

    def __init__(self, model_dir: Path | None = None):
        self.model_dir = model_dir

    def warm(self) -> None:
        """Embed the reference prompts once, so that the first compile after start-up is as fast as the rest."""
        EMBEDDINGS.get([v for text, _ in reference() for v in views([text])])

    def __call__(self, policy_id: str, version: int, path: Path, stored_spec: dict) -> dict:
        return preview(policy_id, version, path, stored_spec, self.model_dir).model_dump()
