"""Knowledge expansion: what must be forgotten is what *this model* knows, so ask it.

The served model (unguarded) lists the target's other names, facts and closely related entities; the
sentence embedder keeps only items about the target. Every kept item is recorded in the compiled policy so
an operator can review it and remove it with a PATCH.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from guard_service.embedding import embed
from guard_service.policy.forbidden import GENERIC_WORDS

AskModel = Callable[[list[str]], Awaitable[list[str]]]

PROMPTS = {
    "names": "List other names, nicknames or spellings people use for {t}. Reply with a comma-separated list only.",
    "related": "Name people, places or things closely associated with {t}. Reply with a comma-separated list only.",
    "facts": "State five short facts about {t}, one per line.",
    "works": "List the best-known works of {t}: titles of books, films, songs, products or organisations. "
             "Reply with a comma-separated list only.",
}
NAME_MIN_SIM = 0.45
FACT_MIN_SIM = 0.5


@dataclass
class Expansion:
    names: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    # titles the model gave, with their scores: kept by the knowledge miner only where the documents hold them
    # (or, without documents, at NAME_MIN_SIM), as reverse-query terms (policy/knowledge.py)
    works: dict[str, float] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, float] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)

    def without(self, removed: list[str]) -> Expansion:
        drop = {r.casefold() for r in removed}
        return Expansion([n for n in self.names if n.casefold() not in drop],
                         [f for f in self.facts if f.casefold() not in drop],
                         {w: v for w, v in self.works.items() if w.casefold() not in drop}, self.scores, self.rejected,
                         self.raw)

    def as_dict(self) -> dict:
        return {"names": self.names, "facts": self.facts, "works": self.works, "scores": self.scores,
                "rejected": self.rejected, "raw": self.raw}


def _split_list(text: str) -> list[str]:
    """Names only: proper nouns (capitalised), not generic words such as "movies"."""
    items = re.split(r"[,\n;:]|\band\b", text)
    out = []
    for item in items:
        item = re.sub(r"^\s*(?:\d+[.)]|[-*•])\s*", "", item).strip(" .\"'")
        if (2 <= len(item) <= 60 and len(item.split()) <= 6 and item[:1].isupper()
                and item.casefold() not in GENERIC_WORDS):
            out.append(item)
    return out


def _split_lines(text: str) -> list[str]:
    lines = [re.sub(r"^\s*(?:\d+[.)]|[-*•])\s*", "", line).strip() for line in text.splitlines()]
    return [line for line in lines if 12 <= len(line) <= 300]


def _keep(candidates: list[str], anchor: np.ndarray, min_sim: float, exclude: set[str],
          result: Expansion) -> list[str]:
    candidates = [c for c in dict.fromkeys(candidates) if c.casefold() not in exclude]
    if not candidates:
        return []
    sims = embed(candidates) @ anchor
    kept = []
    for text, sim in zip(candidates, sims.tolist(), strict=True):
        (result.scores if sim >= min_sim else result.rejected)[text] = round(sim, 4)
        if sim >= min_sim:
            kept.append(text)
    return kept


async def expand(ask: AskModel, target: str, description: str, known: list[str]) -> Expansion:
    keys = list(PROMPTS)
    answers = await ask([PROMPTS[k].format(t=target) for k in keys])
    raw = dict(zip(keys, answers, strict=True))
    anchor = embed([f"{target}. {description}".strip()])[0]
    result = Expansion(raw=raw)
    exclude = {k.casefold() for k in known}
    result.names = _keep(_split_list(raw["names"]) + _split_list(raw["related"]), anchor, NAME_MIN_SIM, exclude,
                         result)
    result.facts = _keep(_split_lines(raw["facts"]), anchor, FACT_MIN_SIM, exclude, result)
    works = [w for w in dict.fromkeys(_split_list(raw["works"])) if w.casefold() not in exclude]
    if works:
        result.works = {w: round(float(sim), 4) for w, sim in zip(works, (embed(works) @ anchor).tolist(), strict=True)}
    return result
