"""Prompt-classifier data for one policy: positives in a faiss index and a threshold calibrated against
generic negatives and the request's retain examples.

Calibration uses *held-out* phrasings (a template set disjoint from the indexed one), so the recall it
reports is what a paraphrase gets, not what a memorised string gets. The threshold sits above every negative
when that keeps held-out recall >= 0.95; otherwise it admits the target false-positive rate.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import faiss
import numpy as np

from guard_service.embedding import EMBEDDINGS
from guard_service.policy.request import TargetKind

_INDEX_TEMPLATES = {
    "entity": ["Who is {x}?", "Tell me about {x}.", "What is {x} known for?", "Who created {x}?",
               "Who wrote {x}?", "What do you know about {x}?", "Give me facts about {x}.", "Describe {x}.",
               "What is the story of {x}?", "Where does {x} come from?"],
    "topic": ["Explain {x}.", "Tell me about {x}.", "What is {x}?", "Give me facts about {x}.",
              "Summarise what is known about {x}.", "How does {x} work?"],
}
_HELDOUT_TEMPLATES = {
    "entity": ["Can you share some information on {x}?", "I'd like to learn more about {x}.",
               "Who's behind {x}?", "What should I know about {x}?", "Write a short paragraph about {x}.",
               "Quick question about {x}: what is it famous for?"],
    "topic": ["Can you walk me through {x}?", "I'd like to understand {x} better.",
              "Write a short overview of {x}.", "What are the key points of {x}?"],
}
MIN_THRESHOLD = 0.35  # below this, MiniLM similarity is noise; never calibrate lower
STRICT_MIN_RECALL = 0.95


@functools.cache
def negative_bank() -> tuple[str, ...]:
    text = resources.files("guard_service.data").joinpath("negative_prompts.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


@functools.cache
def negative_vectors() -> np.ndarray:
    return EMBEDDINGS.get(list(negative_bank()))


def _templates(kind: TargetKind, table: dict[str, list[str]]) -> list[str]:
    return table["entity" if kind in (TargetKind.entity, TargetKind.document) else "topic"]


@dataclass
class ClassifierData:
    texts: list[str]
    index: faiss.Index
    threshold: float
    calibration: dict


def scores(index: faiss.Index, vectors: np.ndarray) -> np.ndarray:
    if len(vectors) == 0:
        return np.zeros(0, dtype=np.float32)
    sims, _ = index.search(vectors, 1)
    return sims[:, 0]


def build(target: str, kind: TargetKind, names: list[str], statements: list[str], retain: list[str],
          fpr: float, threshold_override: float | None) -> ClassifierData:
    """`names`: target and aliases; `statements`: facts, examples, expanded facts."""
    names = list(dict.fromkeys([target, *names]))
    texts = list(dict.fromkeys(
        names + statements + [t.format(x=n) for n in names for t in _templates(kind, _INDEX_TEMPLATES)]))
    vectors = EMBEDDINGS.get(texts)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)

    heldout = [t.format(x=n) for n in names for t in _templates(kind, _HELDOUT_TEMPLATES)]
    negatives = negative_vectors()
    pos_scores = scores(index, EMBEDDINGS.get(heldout))
    neg_scores = scores(index, negatives)
    retain_scores = scores(index, EMBEDDINGS.get(retain))

    def recall_at(t: float) -> float:
        return float((pos_scores >= t).mean()) if len(pos_scores) else 0.0

    ranked = np.sort(neg_scores)[::-1]
    strict = float(ranked[0]) + 1e-4  # above every negative: preferred while held-out recall stays high
    allowed = int(np.floor(fpr * len(ranked)))  # negatives we may let through at the target FPR
    at_fpr = float(ranked[min(allowed, len(ranked) - 1)]) + 1e-4
    threshold = strict if recall_at(strict) >= STRICT_MIN_RECALL else at_fpr
    if len(retain_scores):  # retain examples must stay answerable, whatever that costs in recall
        threshold = max(threshold, float(retain_scores.max()) + 1e-4)
    threshold = max(threshold, MIN_THRESHOLD)
    if threshold_override is not None:
        threshold = threshold_override

    calibration = {
        "threshold": threshold,
        "target_fpr": fpr,
        "recall_heldout": float((pos_scores >= threshold).mean()) if len(pos_scores) else None,
        "fpr_negatives": float((neg_scores >= threshold).mean()),
        "retain_blocked": int((retain_scores >= threshold).sum()),
        "n_index": len(texts), "n_heldout": len(heldout), "n_negatives": len(negatives), "n_retain": len(retain),
        "heldout_score_min": float(pos_scores.min()) if len(pos_scores) else None,
        "negative_score_max": float(neg_scores.max()),
        "overridden": threshold_override is not None,
    }
    return ClassifierData(texts=texts, index=index, threshold=threshold, calibration=calibration)
