"""GUARD-style prompt classifier, run in the API process before generation.

Two detectors per active policy, both cheap: (1) semantic: the conversation's embedding against the policy's
faiss index; (2) lexical: the target and aliases found in the text exactly, spelled out ("H a r r y"), with
common character swaps ("H4rry"), or with a typo. A semantic score above the calibrated threshold matches
only with lexical evidence (a name, place, title or number from what the policy knows) unless it is above the
confident threshold: same-domain prompts (another author, the same question shape) score high semantically
but share no evidence. The prompt is embedded once for all policies; its normal forms are computed once.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz import fuzz

from guard_service.embedding import embed
from guard_service.runtime.registry import ActivePolicy

_SWAPS = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i",
                        "|": "l"})
FUZZY_MIN_LEN = 6
FUZZY_MIN_SCORE = 88


def _squash(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.casefold())


def _words(text: str) -> str:
    return " " + re.sub(r"[^0-9a-z]+", " ", text.casefold()).strip() + " "


@dataclass
class Match:
    policy: ActivePolicy
    score: float
    reasons: list[str] = field(default_factory=list)


@dataclass
class Classification:
    matches: list[Match]
    scores: dict[str, float]
    elapsed_ms: float


class _Text:
    """The normal forms of one prompt that the lexical detector compares against."""

    def __init__(self, raw: str):
        self.words = _words(raw)
        self.squashed = _squash(raw)
        self.swapped = _squash(raw.casefold().translate(_SWAPS))
        self.raw_cf = raw.casefold()


def lexical_reason(text: _Text, aliases: list[str]) -> str | None:
    for alias in aliases:
        w = _words(alias)
        if w.strip() and w in text.words:
            return f"alias:{alias}"
    for alias in aliases:
        s = _squash(alias)
        if len(s) >= 4 and (s in text.squashed or s in text.swapped):
            return f"alias-obfuscated:{alias}"
    for alias in aliases:
        if len(alias) >= FUZZY_MIN_LEN and fuzz.partial_ratio(alias.casefold(), text.raw_cf) >= FUZZY_MIN_SCORE:
            return f"alias-fuzzy:{alias}"
    return None


def evidence_reason(text: _Text, phrases: list[str]) -> str | None:
    for phrase in phrases:
        w = _words(phrase)
        if w.strip() and w in text.words:
            return f"evidence:{phrase}"
    return None


@functools.lru_cache(maxsize=4096)
def _embed_cached(views: tuple[str, ...]) -> np.ndarray:
    """Repeated prompts (retries, n>1 fan-out, popular questions) skip the embedder."""
    vectors = embed(list(views))
    vectors.setflags(write=False)
    return vectors


def classify(turns: list[str], policies: list[ActivePolicy]) -> Classification:
    """`turns`: the user turns, oldest first. The last turn alone and the last three together are embedded,
    so a probe split over several turns is still caught."""
    began = time.perf_counter()
    if not policies or not turns:
        return Classification([], {}, 0.0)
    views = (turns[-1],) if len(turns) == 1 else (turns[-1], "\n".join(turns[-3:]))
    vectors = _embed_cached(views)
    text = _Text("\n".join(turns[-3:]))
    matches, scores = [], {}
    for policy in policies:
        sims, _ = policy.index.search(vectors, 1)
        score = float(np.max(sims))
        scores[policy.key] = round(score, 4)
        reasons = []
        lexical = lexical_reason(text, policy.aliases)
        if lexical:
            reasons.append(lexical)
        if score >= policy.confident_threshold:
            reasons.append(f"semantic:{score:.3f}>={policy.confident_threshold:.3f}")
        elif score >= policy.threshold:
            evidence = lexical or evidence_reason(text, policy.evidence)
            if evidence:
                reasons += [f"semantic:{score:.3f}>={policy.threshold:.3f}", evidence]
        if reasons:
            matches.append(Match(policy, score, reasons))
    return Classification(matches, scores, (time.perf_counter() - began) * 1000)
