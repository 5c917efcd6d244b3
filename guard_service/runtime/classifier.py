"""GUARD-style prompt classifier, run in the API process before generation.

Two detectors per active policy, both cheap: (1) semantic: the conversation's embedding against the policy's
faiss index; (2) lexical: the target and aliases found in the text exactly, spelled out ("H a r r y"), with
common character swaps ("H4rry"), or with a typo. A semantic score above the calibrated threshold matches
only with lexical evidence (a name, place, title or number from what the policy knows) unless it is above the
confident threshold: same-domain prompts (another author, the same question shape) score high semantically
but share no evidence. Evidence is checked for what it names: one word of the target's name inside a different
name ("Justin" in "Justin Timberlake", "Marais" in "Elsie Marais Van der Westhuizen") is someone else, and a bare
number (a birth year) is shared by too many people to count alone.

The classifier reads everything the model conditions on: every message of every role, each on its own (windowed
when long, so a long prefix cannot dilute the question) and windows over the whole conversation (a question
split across turns). The views are embedded once for all policies; the text's normal forms are computed once.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz import fuzz

from guard_service.embedding import embed
from guard_service.runtime.names import name_index, name_leaks, units_of
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


# Particles that sit inside personal and place names ("Duke of Sussex", "Van der Westhuizen").
_NAME_LINKS = {"of", "van", "der", "den", "de", "del", "della", "di", "da", "du", "la", "le", "von", "bin", "ibn",
               "al", "el"}
# Capitalised at the start of a question without being part of the name that follows.
_LEADING = {"what", "who", "whom", "whose", "where", "when", "why", "how", "which", "did", "does", "do", "is",
            "was", "are", "were", "can", "could", "would", "will", "has", "have", "had", "the", "a", "an", "in",
            "on", "at", "for", "and", "but", "if", "tell", "name", "list", "describe", "explain", "please", "give",
            "write", "before", "after", "while", "during", "since", "as", "from", "with", "about"}
_WORD = re.compile(r"[^\W\d_][\w'’-]*")


def _name_runs(raw: str) -> list[tuple[str, ...]]:
    """The names a prompt mentions: runs of capitalised words (with name particles between them) separated by
    whitespace only, casefolded, possessive dropped, leading question words removed."""
    runs: list[list[str]] = []
    current: list[str] = []
    last_end = -1
    for m in _WORD.finditer(raw):
        word = re.sub(r"['’]s$", "", m.group())
        joined = bool(current) and raw[last_end:m.start()].isspace()
        if word[:1].isupper() or (joined and word.casefold() in _NAME_LINKS):
            if not joined:
                current = []
                runs.append(current)
            current.extend(_words(word).split())  # "Al-Hashim" -> al, hashim: the same words as the names
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


class _Text:
    """The normal forms of one prompt that the lexical detector compares against."""

    def __init__(self, raw: str):
        self.raw = raw
        self.words = _words(raw)
        self.squashed = _squash(raw)
        self.swapped = _squash(raw.casefold().translate(_SWAPS))
        self.raw_cf = raw.casefold()

    @functools.cached_property
    def names(self) -> list[tuple[str, ...]]:
        return _name_runs(self.raw)

    @functools.cached_property
    def units(self) -> list[tuple[str, int, int]]:
        return units_of(self.raw)


def partial_name_reason(text: _Text, policy: ActivePolicy) -> str | None:
    """A whole name of the target spelled in pieces or cut short ("J.K. R", "Harry Pot", "Hermi-one")."""
    spans = name_leaks(text.raw, name_index(policy.path, whole_only=True), 0, True, text.units)
    return f"alias-partial:{text.raw[spans[0][0]:spans[0][1]]}" if spans else None


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
        # partial_ratio slides the shorter string over the longer: a text shorter than the alias ("a") would be
        # compared with a piece of the alias and match it.
        if (len(alias) >= FUZZY_MIN_LEN and len(text.raw_cf) >= len(alias)
                and fuzz.partial_ratio(alias.casefold(), text.raw_cf) >= FUZZY_MIN_SCORE):
            return f"alias-fuzzy:{alias}"
    return None


@functools.lru_cache(maxsize=4096)
def _name_words(aliases: tuple[str, ...]) -> tuple[frozenset[str], tuple[tuple[str, ...], ...]]:
    names = tuple(tuple(_words(a).split()) for a in aliases)
    return frozenset(w for n in names if len(n) > 1 for w in n), names


def _same_name(run: tuple[str, ...], name: tuple[str, ...]) -> bool:
    """`run` is part of `name`, or is `name` with middle names ("Justin Drew Bieber" for "Justin Bieber")."""
    if _contiguous_in(run, name):
        return True
    if len(name) < 2 or run[0] != name[0] or run[-1] != name[-1]:
        return False
    rest = iter(run)
    return all(w in rest for w in name)


def _names_target(word: str, text: _Text, names: tuple[tuple[str, ...], ...]) -> bool:
    """True unless every mention of `word` (part of a target name) sits inside a name that is not the target's."""
    runs = [r for r in text.names if word in r]
    return not runs or any(_same_name(r, n) for r in runs for n in names)


def _present(phrase: str, text: _Text) -> bool:
    w = _words(phrase)
    return bool(w.strip()) and w in text.words


def evidence_reason(text: _Text, policy: ActivePolicy) -> str | None:
    name_words, names = _name_words(tuple(policy.aliases))
    numbers = []
    for phrase in policy.evidence:
        if not _present(phrase, text):
            continue
        key = _words(phrase).strip()
        if key in name_words and not _names_target(key, text, names):
            continue
        if phrase.isdigit():
            numbers.append(phrase)
            continue
        return f"evidence:{phrase}"
    if not numbers:
        return None
    corroborating = numbers[1:] + [w for w in policy.weak_evidence if _present(w, text)]
    return f"evidence:{numbers[0]}+{corroborating[0]}" if corroborating else None


class EmbeddingCache:
    """View text -> vector, LRU-bounded: repeated prompts (retries, n>1 fan-out, popular questions, the same
    system prompt on every request) skip the embedder; the rest are embedded in one batch."""

    def __init__(self, capacity: int = 8192):
        self.capacity = capacity
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, views: list[str]) -> np.ndarray:
        with self._lock:
            known = {v: self._items[v] for v in views if v in self._items}
        missing = [v for v in dict.fromkeys(views) if v not in known]
        if missing:  # embedded outside the lock: other requests' hits need not wait for it
            known.update(zip(missing, embed(missing), strict=True))
        with self._lock:
            for v in dict.fromkeys(views):
                self._items[v] = known[v]
                self._items.move_to_end(v)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return np.stack([known[v] for v in views])

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


EMBEDDINGS = EmbeddingCache()
WINDOW_WORDS = 48


def _windows(text: str, size: int) -> list[str]:
    """`text` itself when short, else overlapping windows of `size` words (stride size/2, the last one flush
    with the end): a question inside a long message or behind a long prefix is read on its own, not diluted."""
    words = text.split()
    if len(words) <= size:
        return [text.strip()]
    stride = max(1, size // 2)
    starts = list(range(0, len(words) - size + 1, stride))
    if starts[-1] != len(words) - size:
        starts.append(len(words) - size)
    return [" ".join(words[s:s + size]) for s in starts]


def views(segments: list[str], window_words: int = WINDOW_WORDS) -> list[str]:
    """What the embedder reads for one prompt: every segment (message) on its own, windowed when long, and
    windows over the whole conversation, which catch a question split across turns. The count is linear in
    the prompt's length (about 2 * words / window_words + messages), so bounded by the model's context."""
    out = [w for seg in segments for w in _windows(seg, window_words)]
    if len(segments) > 1:
        out += _windows("\n".join(segments), window_words)
    return list(dict.fromkeys(v for v in out if v))


def classify(segments: list[str], policies: list[ActivePolicy], window_words: int = WINDOW_WORDS) -> Classification:
    """`segments`: everything the model conditions on, oldest first (each message of a chat, whatever its role;
    or a completion prompt's text)."""
    return classify_batch([segments], policies, window_words)[0]


def classify_batch(prompts: list[list[str]], policies: list[ActivePolicy],
                   window_words: int = WINDOW_WORDS) -> list[Classification]:
    """Each prompt classified on its own (a list of completion prompts gets one decision per prompt); the
    views of all of them are embedded in one batch."""
    began = time.perf_counter()
    per_prompt = [views(segments, window_words) for segments in prompts]
    flat = [v for vs in per_prompt for v in vs]
    if not policies or not flat:
        return [Classification([], {}, 0.0) for _ in prompts]
    vectors = EMBEDDINGS.get(flat)
    results, row = [], 0
    for segments, vs in zip(prompts, per_prompt, strict=True):
        mine, row = vectors[row:row + len(vs)], row + len(vs)
        results.append(_classify_one("\n".join(segments), mine, policies) if vs else Classification([], {}, 0.0))
    elapsed = (time.perf_counter() - began) * 1000
    for r in results:
        r.elapsed_ms = elapsed
    return results


def _classify_one(raw: str, vectors: np.ndarray, policies: list[ActivePolicy]) -> Classification:
    text = _Text(raw)
    matches, scores = [], {}
    for policy in policies:
        sims, _ = policy.index.search(vectors, 1)
        score = float(np.max(sims))
        scores[policy.key] = round(score, 4)
        reasons = []
        lexical = lexical_reason(text, policy.aliases) or partial_name_reason(text, policy)
        if lexical:
            reasons.append(lexical)
        if score >= policy.confident_threshold:
            reasons.append(f"semantic:{score:.3f}>={policy.confident_threshold:.3f}")
        elif score >= policy.threshold:
            evidence = lexical or evidence_reason(text, policy)
            if evidence:
                reasons += [f"semantic:{score:.3f}>={policy.threshold:.3f}", evidence]
        if reasons:
            matches.append(Match(policy, score, reasons))
    return Classification(matches, scores, 0.0)
