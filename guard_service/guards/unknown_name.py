"""Unknown-name evidence (prompt phase, `evidence`): a name no one the guard knows, spelled like the target's.

A user who half remembers or disguises a name asks about the target with it mangled beyond a typo ("How did Izv
Mcame's parents influence her career in geology?" for Hina Ameen: a third to over half of its letters replaced,
swapped or dropped), often with the question's place and date mangled too, so that no name, number or place of
the target's is left to corroborate a mid-range semantic or described score. The name's letters still are: a run
of capitalised words in the prompt that

- is not the target's name or part of it (those are the name and evidence detectors' own),
- names no one known: some word of it is rare in general language (`wordfreq` Zipf < `NAME_WORD_ZIPF`; "Linda
  Harrison" and "Jordan Sinclair" are names people have, and a known name is someone else's),
- and is as close, letter by letter, to one of the target's whole names as `MIN_RATIO` (rapidfuzz's ratio,
  0-100)

corroborates the candidate as the target's name would. Opt-in per request (`strength.mangled_names`, the
minimum ratio): on this project's own mangling (`evaluation/perturb.mangle_question`, `bench/mangled_names.py`)
a mangled forget05 name scores 56.5 or more to its target in 95% of draws (median 68.5) and 95% of the other
TOFU authors' names score under 56.1 to every forget05 author, but a near-namesake scores like a mangled name ("Aisha
Al-Hamad", a TOFU retain author, beside the forget05 author "Aysha Al-Hashim"), and no list of the people a
guard knows ships with it to tell them apart. Reads classifier.json; compiles nothing of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from rapidfuzz import fuzz

from guard_service.guards.base import Finding, GuardComponent, Level, PromptText
from guard_service.guards.evidence import name_runs
from guard_service.guards.spelling import words
from guard_service.policy.artifacts import PolicyArtifact
from guard_service.policy.knowledge import general_zipf
from guard_service.policy.request import UnlearningRequest

NAME_WORD_ZIPF = 3.0  # a word this frequent in general language is a word, or a name people commonly have


@dataclass(frozen=True)
class Names:
    whole: tuple[str, ...]  # the target's names of two words or more, as `spelling.words` writes them
    parts: frozenset[str]  # their words
    min_ratio: int


def _unknown(run: tuple[str, ...]) -> bool:
    return any(len(w) >= 2 and general_zipf(w) < NAME_WORD_ZIPF for w in run)


def unknown_runs(raw: str) -> list[str]:
    """The prompt's runs of two or more capitalised words that name no one known (shared by every policy)."""
    return [" ".join(run) for run in name_runs(raw) if len(run) >= 2 and _unknown(run)]


class UnknownNameEvidence(GuardComponent):
    name = "unknown_name"
    corroborates = True

    def load(self, artifact: PolicyArtifact, spec: UnlearningRequest) -> Names | None:
        if spec.strength.mangled_names is None:
            return None
        whole = tuple(dict.fromkeys(w for a in artifact.classifier.aliases if len((w := words(a).strip()).split()) > 1))
        return Names(whole, frozenset(p for w in whole for p in w.split()), spec.strength.mangled_names) \
            if whole else None

    def scan(self, part: Names | None, prompt: PromptText) -> Finding | None:
        if part is None:
            return None
        for run in prompt.derived("unknown_name_runs", unknown_runs):
            if set(run.split()) <= part.parts:
                continue  # the target's own name, or part of it
            best = max(part.whole, key=lambda n: fuzz.ratio(run, n))
            score = fuzz.ratio(run, best)
            if score >= part.min_ratio:
                return Finding(Level.evidence, f"unknown-name:{run}~{best}:{score:.0f}", score / 100)
        return None
