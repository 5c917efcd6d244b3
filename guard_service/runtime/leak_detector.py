"""Output leak detector (API process): finds forgotten knowledge in what was actually generated.

Lexical: any spelling variant of a policy's forbidden strings (the same list the trie was built from),
case-insensitive, on word boundaries, scanned incrementally as the stream grows. Semantic: at the end, each
generated sentence against the policy's facts (operator-given and expanded). Every active policy that
applies to the request is scanned, matched or not: a leak on an unmatched prompt is a classifier miss that
operators must see. A policy with `on_leak: block` cuts the stream at the first lexical leak.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from guard_service.embedding import embed
from guard_service.runtime.registry import ActivePolicy

SEMANTIC_MIN_CHARS = 20
FACT_MIN_SIM = 0.7  # a generated sentence this close to a forbidden fact restates it


@functools.lru_cache(maxsize=256)
def leak_pattern(path: Path) -> re.Pattern[str]:
    variants = json.loads((path / "forbidden.json").read_text())["variants"]
    words = sorted({v.casefold() for v in variants}, key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE)


@dataclass
class Leak:
    policy: str
    kind: str  # lexical | semantic
    text: str
    start: int
    score: float | None = None

    def as_dict(self) -> dict:
        return {"policy": self.policy, "kind": self.kind, "text": self.text, "start": self.start,
                "score": None if self.score is None else round(self.score, 4)}


@dataclass
class LeakScanner:
    """One per generated choice. `feed` the growing text; it returns new lexical leaks."""

    policies: list[ActivePolicy]
    text: str = ""
    leaks: list[Leak] = field(default_factory=list)
    _scanned: int = 0
    _finished: bool = False

    def feed(self, delta: str) -> list[Leak]:
        self.text += delta
        window_start = max(0, self._scanned - 64)  # a leak may straddle deltas
        found = []
        for policy in self.policies:
            for m in leak_pattern(policy.path).finditer(self.text, window_start):
                if m.end() > self._scanned and not any(
                        lk.policy == policy.key and lk.start == m.start() for lk in self.leaks):
                    found.append(Leak(policy.key, "lexical", m.group(0), m.start()))
        self._scanned = len(self.text)
        self.leaks += found
        return found

    def blocking(self, leaks: list[Leak]) -> Leak | None:
        block = {p.key for p in self.policies if p.spec.on_leak == "block"}
        return min((lk for lk in leaks if lk.policy in block), key=lambda lk: lk.start, default=None)

    def finish(self) -> list[Leak]:
        if self._finished:
            return self.leaks
        self._finished = True
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", self.text) if
                     len(s.strip()) >= SEMANTIC_MIN_CHARS]
        policies = [p for p in self.policies if len(p.fact_vectors)]
        if not sentences or not policies:
            return self.leaks
        vectors = embed(sentences)
        for policy in policies:
            sims = (vectors @ policy.fact_vectors.T).max(axis=1)
            best = int(np.argmax(sims))
            score = float(sims[best])
            if score >= FACT_MIN_SIM:
                self.leaks.append(Leak(policy.key, "semantic", sentences[best], self.text.find(sentences[best]),
                                       score))
        return self.leaks

    def summary(self) -> list[dict]:
        return [lk.as_dict() for lk in self.leaks]
