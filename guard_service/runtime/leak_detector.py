"""Output leak detector (API process): finds forgotten knowledge in what was actually generated.

Lexical: any spelling variant of a policy's forbidden strings (the same list the trie was built from),
case-insensitive, on word boundaries, scanned incrementally as the stream grows. Names are also matched unit by
unit (letters and digits, whatever separates them: "J K Rowling", "Harry-Potter", "H a r r y"), and truncated
or bent spellings of a name count as leaks too: most of a single-word name ("Hermion", "Rowle"), or a name's
first word(s) followed by the start of the next ("J.K.R", "Harry Potts"). Semantic: at the end, each generated
sentence against the policy's facts (operator-given and expanded).

The scan starts at the prompt's tail: a name begun in the prompt and finished by the output is a leak; one that
lies wholly in the prompt is not. Every active policy that applies to the request is scanned, matched or not: a
leak on an unmatched prompt is a classifier miss that operators must see. A policy with `on_leak: block` cuts
the stream at the first leak.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from guard_service.embedding import embed
from guard_service.runtime.names import name_index, name_leaks
from guard_service.runtime.registry import ActivePolicy

SEMANTIC_MIN_CHARS = 20
FACT_MIN_SIM = 0.7  # a generated sentence this close to a forbidden fact restates it
RESCAN_CHARS = 96  # a leak may straddle deltas: each feed rescans this much of what came before


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
    start: int  # offset in the generated text (0 when the leak began in the prompt)
    score: float | None = None

    def as_dict(self) -> dict:
        return {"policy": self.policy, "kind": self.kind, "text": self.text, "start": self.start,
                "score": None if self.score is None else round(self.score, 4)}


@dataclass
class LeakScanner:
    """One per generated choice. `feed` the growing text; it returns new lexical leaks. `prompt_tail` is the
    end of the prompt the output continues."""

    policies: list[ActivePolicy]
    prompt_tail: str = ""
    text: str = field(init=False)  # prompt tail + output
    leaks: list[Leak] = field(default_factory=list)
    _scanned: int = field(init=False)
    _finished: bool = False

    def __post_init__(self) -> None:
        self.text = self.prompt_tail
        self._scanned = len(self.prompt_tail)

    @property
    def output(self) -> str:
        return self.text[len(self.prompt_tail):]

    def _found(self, policy: ActivePolicy, start: int, end: int) -> Leak | None:
        offset = len(self.prompt_tail)
        rel = max(0, start - offset)
        if end <= offset or any(lk.policy == policy.key and lk.start == rel for lk in self.leaks):
            return None
        return Leak(policy.key, "lexical", self.text[max(start, 0):end], rel)

    def _scan(self, final: bool) -> list[Leak]:
        window = max(0, self._scanned - RESCAN_CHARS)
        found: list[Leak] = []
        for policy in self.policies:
            spans = [(m.start(), m.end()) for m in leak_pattern(policy.path).finditer(self.text, window)
                     if m.end() > self._scanned or final]
            spans += name_leaks(self.text, name_index(policy.path), window, final)
            for start, end in sorted(spans):
                leak = self._found(policy, start, end)
                if leak is not None:
                    found.append(leak)
                    self.leaks.append(leak)
        return found

    def feed(self, delta: str) -> list[Leak]:
        self.text += delta
        found = self._scan(final=False)
        self._scanned = len(self.text)
        return found

    def blocking(self, leaks: list[Leak]) -> Leak | None:
        block = {p.key for p in self.policies if p.spec.on_leak == "block"}
        return min((lk for lk in leaks if lk.policy in block), key=lambda lk: lk.start, default=None)

    def finish(self) -> list[Leak]:
        """Judge what only the end can tell (a last word that might have grown), then compare each generated
        sentence with the policies' facts. Embeds: call off the event loop."""
        if self._finished:
            return self.leaks
        self._finished = True
        self._scan(final=True)
        output = self.output
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", output) if
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
                self.leaks.append(Leak(policy.key, "semantic", sentences[best], output.find(sentences[best]),
                                       score))
        return self.leaks

    def summary(self) -> list[dict]:
        return [lk.as_dict() for lk in self.leaks]
