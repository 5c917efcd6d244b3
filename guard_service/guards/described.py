"""Described detector (prompt phase, `candidate`): a question that names no one but describes the target by what
is known about it ("the geology author born in Karachi", "Who is this? A prolific American author renowned as the
King of Horror", a hint sentence before "what was this person's debut novel?"). Such a prompt is far from the
facts as written (they name the target), and close to the same facts with the name taken out. So each sentence of
the target's facts and description is embedded with its names replaced ("This person was born in Karachi") and a
prompt very close to one of them matches (unless it gives a number the target's facts do not hold); one fairly
close is a candidate: like a mid-range semantic score it matches only beside evidence of this target (a title, a
multi-word name, a number with a place of its facts).
A fact that says little once its name is gone ("The author's full name is X": "full", "name") is left out: it
would match every "what is the author's name?". Reads classifier.json; compiles nothing of its own."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from guard_service.embedding import EMBEDDINGS
from guard_service.guards.base import Finding, GuardComponent, Level, PromptText
from guard_service.policy.artifacts import PolicyArtifact
from guard_service.policy.forbidden import unnamed
from guard_service.policy.request import TargetKind, UnlearningRequest
from guard_service.policy.text import sentences

DESCRIBED_MIN_SIM = 0.7  # a prompt this close to an unnamed fact may describe the target (a candidate)
DESCRIBED_SIM = 0.85  # ... this close, it restates the fact with the name taken out (a match)
MIN_CONTENT_WORDS = 4
# Function words, and the stand-in for the name: what is left says something about the target.
_STOPWORDS = frozenset({
    "a", "an", "the", "of", "to", "in", "on", "at", "for", "by", "with", "from", "and", "or", "but", "is", "are",
    "was", "were", "be", "been", "being", "has", "have", "had", "do", "does", "did", "this", "that", "these",
    "those", "it", "its", "his", "her", "their", "he", "she", "they", "them", "who", "whom", "whose", "what",
    "which", "when", "where", "why", "how", "as", "into", "about", "than", "then", "so", "such", "can", "could",
    "would", "should", "will", "may", "might", "must", "not", "no", "also", "very", "more", "most", "person",
})


@dataclass(frozen=True)
class Described:
    vectors: np.ndarray  # the target's fact and description sentences with its names taken out
    numbers: frozenset[str]  # the numbers its facts and description hold (years, dates)
    mined: np.ndarray  # the same, of the facts mined from its documents: a match only, never a candidate


_NUMBER = re.compile(r"\d{2,}")


def _says_something(masked: str) -> bool:
    content = [w for w in re.findall(r"[^\W\d_]{3,}|\d+", masked.casefold()) if w not in _STOPWORDS]
    return len(content) >= MIN_CONTENT_WORDS


def unnamed_sentences(texts: list[str], names: list[str], instead: str) -> list[str]:
    """The sentences of `texts` with `names` replaced by `instead`: only those that named the target, and say
    something about it once the name is gone."""
    return [m for t in texts for s in sentences(t) if (m := unnamed(s, names, instead)) != s and _says_something(m)]


class DescribedDetector(GuardComponent):
    name = "described"

    def load(self, artifact: PolicyArtifact, spec: UnlearningRequest) -> Described:
        clf = artifact.classifier
        instead = "this person" if spec.kind is TargetKind.entity else "this"

        def masked(texts: list[str]) -> np.ndarray:
            found = unnamed_sentences(texts, list(clf.aliases), instead)
            return EMBEDDINGS.get(found) if found else np.zeros((0, 1), dtype=np.float32)

        # A document's sentence about the target also describes what surrounds it (a co-star, a show it hosted):
        # near one, a question may be about that instead (RWKU's neighbours), so only a restatement matches.
        mined = artifact.knowledge.facts()
        return Described(masked([*clf.facts, spec.description]),
                         frozenset(_NUMBER.findall(" ".join([*clf.facts, spec.description, *mined]))), masked(mined))

    def scan(self, part: Described, prompt: PromptText) -> Finding | None:
        if not len(part.vectors) and not len(part.mined):
            return None
        own, mined = (_closest(prompt.vectors, v) for v in (part.vectors, part.mined))
        score = max(own, mined)
        # A description with a number the target's facts do not hold ("the author born in Baku on February 14,
        # 1960", of a target born there in another year) is someone else's, unless evidence says otherwise.
        numbers = _NUMBER.findall(prompt.raw)
        if score >= DESCRIBED_SIM and all(n in part.numbers for n in numbers):
            return Finding(Level.match, f"described:{score:.3f}>={DESCRIBED_SIM}", score)
        if own >= DESCRIBED_MIN_SIM:
            return Finding(Level.candidate, f"described:{own:.3f}>={DESCRIBED_MIN_SIM}", own)
        return None


def _closest(vectors: np.ndarray, facts: np.ndarray) -> float:
    return float((vectors @ facts.T).max()) if len(vectors) and len(facts) else 0.0
