"""GUARD-style prompt classifier, run in the API process before generation: every applicable policy's prompt
detectors (guard components with a `scan`) over one prompt, combined by one rule.

It reads everything the model conditions on: every message of every role, each on its own (windowed when long,
so a long prefix cannot dilute the question) and windows over the whole conversation (a question split across
turns). The views are embedded once for all policies (and cached); the text's normal forms are derived once.

The rule: a `match` finding matches; a `candidate` (a mid-range semantic score) matches only beside a `match`
or an `evidence` finding, and the evidence detectors run only for a candidate without a match.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from guard_service.embedding import EMBEDDINGS
from guard_service.frontend.registry import ActivePolicy
from guard_service.guards import COMPONENTS
from guard_service.guards.base import GuardComponent, Level, PromptText
from guard_service.policy.confusables import fold
from guard_service.policy.text import sentences

WINDOW_WORDS = 48


def _scans(c: GuardComponent) -> bool:
    return type(c).scan is not GuardComponent.scan


DETECTORS = tuple(c for c in COMPONENTS if _scans(c) and not c.corroborates)
CORROBORATORS = tuple(c for c in COMPONENTS if _scans(c) and c.corroborates)


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


def _sentences(text: str) -> list[str]:
    """The sentences of a message of several: a hint or a second question read on its own ("Hint: <what is
    known about the target>. Question: ...")."""
    found = sentences(text)
    return found if len(found) > 1 else []


def views(segments: list[str], window_words: int = WINDOW_WORDS) -> list[str]:
    """What the embedder reads for one prompt: every segment (message) on its own, windowed when long, each of
    its sentences when it has several, and windows over the whole conversation, which catch a question split
    across turns. The count is linear in the prompt's length (about 2 * words / window_words + sentences +
    messages), so bounded by the model's context."""
    out = [w for seg in segments for w in [*_windows(seg, window_words), *_sentences(seg)]]
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
    prompts = [[fold(s) for s in segments] for segments in prompts]  # "Ηarry Ρotter" in Greek letters is Harry
    per_prompt = [views(segments, window_words) for segments in prompts]
    flat = [v for vs in per_prompt for v in vs]
    if not policies or not flat:
        return [Classification([], {}, 0.0) for _ in prompts]
    vectors = EMBEDDINGS.get(flat)
    results, row = [], 0
    for segments, vs in zip(prompts, per_prompt, strict=True):
        mine, row = vectors[row:row + len(vs)], row + len(vs)
        results.append(_classify_one(PromptText("\n".join(segments), mine), policies) if vs
                       else Classification([], {}, 0.0))
    elapsed = (time.perf_counter() - began) * 1000
    for r in results:
        r.elapsed_ms = elapsed
    return results


def _classify_one(prompt: PromptText, policies: list[ActivePolicy]) -> Classification:
    matches, scores = [], {}
    for policy in policies:
        found, candidate, score = [], None, 0.0
        for c in DETECTORS:
            f = c.scan(policy.parts[c.name], prompt)
            if f is None:
                continue
            score = max(score, f.score or 0.0)
            if f.level is Level.match:
                found.append(f.reason)
            elif f.level is Level.candidate and candidate is None:
                candidate = f.reason
        scores[policy.key] = round(score, 4)
        reasons = list(found)
        if candidate is not None:
            support = found[0] if found else next(
                (f.reason for c in CORROBORATORS if (f := c.scan(policy.parts[c.name], prompt)) is not None), None)
            if support is not None:
                reasons += [candidate, support]
        if reasons:
            matches.append(Match(policy, score, reasons))
    return Classification(matches, scores, 0.0)
