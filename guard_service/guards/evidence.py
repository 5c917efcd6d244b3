"""Evidence detector (prompt phase, `evidence`): what says a prompt is about *this* target rather than one like
it, corroborating a mid-range semantic score. Same-domain prompts (another author, the same question shape) score
high semantically but share none of it. Evidence is checked for what it names: one word of the target's name
inside a different name ("Justin" in "Justin Timberlake", "Marais" in "Elsie Marais Van der Westhuizen") is
someone else, while the target with a middle name ("Justin Drew Bieber") is; a bare number (a birth year) is
shared by too many people to count alone, only beside a second number or a place or genre word of the target's.
Reads classifier.json; compiles nothing of its own."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from guard_service.guards.base import Finding, GuardComponent, Level, PromptText
from guard_service.guards.spelling import words
from guard_service.policy.artifacts import PolicyArtifact
from guard_service.policy.request import UnlearningRequest
from guard_service.policy.text import without_possessive


@dataclass(frozen=True)
class Evidence:
    aliases: tuple[str, ...]
    evidence: tuple[str, ...]
    weak_evidence: tuple[str, ...]  # single place/genre words: count only beside a matching number


# Particles that sit inside personal and place names ("Duke of Sussex", "Van der Westhuizen").
_NAME_LINKS = {"of", "van", "der", "den", "de", "del", "della", "di", "da", "du", "la", "le", "von", "bin", "ibn",
               "al", "el"}
# Capitalised at the start of a question without being part of the name that follows.
_LEADING = {"what", "who", "whom", "whose", "where", "when", "why", "how", "which", "did", "does", "do", "is",
            "was", "are", "were", "can", "could", "would", "will", "has", "have", "had", "the", "a", "an", "in",
            "on", "at", "for", "and", "but", "if", "tell", "name", "list", "describe", "explain", "please", "give",
            "write", "before", "after", "while", "during", "since", "as", "from", "with", "about"}
_WORD = re.compile(r"[^\W\d_][\w'’-]*")


def name_runs(raw: str) -> list[tuple[str, ...]]:
    """The names a prompt mentions: runs of capitalised words (with name particles between them) separated by
    whitespace only, casefolded, possessive dropped, leading question words removed."""
    runs: list[list[str]] = []
    current: list[str] = []
    last_end = -1
    for m in _WORD.finditer(raw):
        word = without_possessive(m.group())
        joined = bool(current) and raw[last_end:m.start()].isspace()
        if word[:1].isupper() or (joined and word.casefold() in _NAME_LINKS):
            if not joined:
                current = []
                runs.append(current)
            current.extend(words(word).split())  # "Al-Hashim" -> al, hashim: the same words as the names
        else:
            current = []
        last_end = m.end()
    out = []
    for run in runs:
        while run and run[0] in _LEADING:
            run = run[1:]
        while run and run[-1] in _NAME_LINKS:
            run = run[:-1]
        if run:
            out.append(tuple(run))
    return out


def _contiguous_in(run: tuple[str, ...], name: tuple[str, ...]) -> bool:
    return any(name[i:i + len(run)] == run for i in range(len(name) - len(run) + 1))


@functools.lru_cache(maxsize=4096)
def _name_words(aliases: tuple[str, ...]) -> tuple[frozenset[str], tuple[tuple[str, ...], ...]]:
    names = tuple(tuple(words(a).split()) for a in aliases)
    return frozenset(w for n in names if len(n) > 1 for w in n), names


def _same_name(run: tuple[str, ...], name: tuple[str, ...]) -> bool:
    """`run` is part of `name`, or is `name` with middle names ("Justin Drew Bieber" for "Justin Bieber")."""
    if _contiguous_in(run, name):
        return True
    if len(name) < 2 or run[0] != name[0] or run[-1] != name[-1]:
        return False
    rest = iter(run)
    return all(w in rest for w in name)


def _names_target(word: str, prompt: PromptText, names: tuple[tuple[str, ...], ...]) -> bool:
    """True unless every mention of `word` (part of a target name) sits inside a name that is not the target's."""
    runs = [r for r in prompt.derived("name_runs", name_runs) if word in r]
    return not runs or any(_same_name(r, n) for r in runs for n in names)


def _present(phrase: str, prompt: PromptText) -> bool:
    w = words(phrase)
    return bool(w.strip()) and w in prompt.derived("words", words)


def evidence_reason(prompt: PromptText, part: Evidence) -> str | None:
    name_words, names = _name_words(part.aliases)
    numbers = []
    for phrase in part.evidence:
        if not _present(phrase, prompt):
            continue
        key = words(phrase).strip()
        if key in name_words and not _names_target(key, prompt, names):
            continue
        if phrase.isdigit():
            numbers.append(phrase)
            continue
        return f"evidence:{phrase}"
    if not numbers:
        return None
    corroborating = numbers[1:] + [w for w in part.weak_evidence if _present(w, prompt)]
    return f"evidence:{numbers[0]}+{corroborating[0]}" if corroborating else None


def names_someone_else(text: PromptText, part: Evidence) -> str | None:
    """The first name of two or more words in `text`, when it is neither one of the target's names nor inside its
    evidence: what the sentence is about ("Rhoda Mbalazi won the ... Award for African American literature",
    otherwise close to the target's facts). A sentence that first names the target or its evidence is about
    the target, whatever it lists after it ("the Mona Lisa, the Venus de Milo and ...")."""
    _, names = _name_words(part.aliases)
    known = [tuple(words(p).split()) for p in part.evidence]
    run = next((r for r in text.derived("name_runs", name_runs) if len(r) >= 2), None)
    if run is None or any(_same_name(run, n) or _same_name(n, run) for n in names) or any(
            _contiguous_in(run, k) for k in known):
        return None
    return " ".join(run)


class EvidenceDetector(GuardComponent):
    name = "evidence"
    corroborates = True

    def load(self, artifact: PolicyArtifact, spec: UnlearningRequest) -> Evidence:
        clf = artifact.classifier
        return Evidence(tuple(clf.aliases), tuple(clf.evidence), tuple(clf.weak_evidence))

    def scan(self, part: Evidence, prompt: PromptText) -> Finding | None:
        reason = evidence_reason(prompt, part)
        return Finding(Level.evidence, reason) if reason else None
