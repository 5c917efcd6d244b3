"""Forbidden strings -> every token-id sequence the served tokenizer can spell them with.

The canonical encoding is not enough: once its last token is banned, a model happily spells the same word
with other pieces (" Row" "l" "ing"). So each string is segmented over the vocabulary's surface forms, in
the contexts a word appears in (start of text, after a space), keeping the shortest segmentations.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_EXTRA_TOKENS = 1  # segmentations up to canonical length + this
MAX_SUFFIX_CHARS = 3  # "en" -> "ens", "en's": a final piece with a few more letters still spells the name
MAX_PER_STRING = 32
NAME_SEPARATORS = frozenset(".-'’·")  # what may split the letters of a name ("Herm-ione", "J.K.R")
_EXPLORE = 512  # segmentations enumerated before the shortest MAX_PER_STRING are kept


@functools.lru_cache(maxsize=4)
def surfaces(tokenizer: Any) -> tuple[dict[str, list[int]], int]:
    """Decoded text of every vocabulary id (ids that decode to partial UTF-8 are left out)."""
    size = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=True)
    special = set(getattr(tokenizer, "all_special_ids", []))
    table: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        if t and "\ufffd" not in t and i not in special:
            table.setdefault(t, []).append(i)
    return table, max(len(t) for t in table)


@dataclass(frozen=True, eq=False)
class TokenClasses:
    """Per vocabulary id, how its surface text begins and ends: what word-level rules over token sequences need
    (a token that starts with a letter continues the word before it; one that starts with a space begins one)."""

    continues_word: np.ndarray  # bool[V]: starts with a letter, no leading space
    ends_in_letter: np.ndarray  # bool[V]
    chars: np.ndarray  # int32[V]: surface length, leading spaces not counted
    separator: np.ndarray  # bool[V]: only what may split a name's letters (".", "-", an apostrophe, spaces)

    def __len__(self) -> int:
        return len(self.chars)


@functools.lru_cache(maxsize=4)
def token_classes(tokenizer: Any) -> TokenClasses:
    table, _ = surfaces(tokenizer)
    size = len(tokenizer)
    cont, ends, chars = np.zeros(size, bool), np.zeros(size, bool), np.zeros(size, np.int32)
    sep = np.zeros(size, bool)
    for text, ids in table.items():
        stripped = text.lstrip()
        cont[ids] = text[:1].isalpha()
        ends[ids] = text[-1:].isalpha()
        chars[ids] = len(stripped)
        sep[ids] = bool(stripped) and all(c in NAME_SEPARATORS for c in stripped) and len(stripped) <= 2
    return TokenClasses(cont, ends, chars, sep)


@functools.lru_cache(maxsize=4)
def extension_index(tokenizer: Any) -> dict[str, list[int]]:
    """Piece text -> ids of pieces that are that text plus 1-3 more letters (or an apostrophe-s)."""
    table, _ = surfaces(tokenizer)
    index: dict[str, list[int]] = {}
    for text, ids in table.items():
        for cut in range(max(1, len(text) - MAX_SUFFIX_CHARS), len(text)):
            if text[cut:].replace("'", "").replace("’", "").isalpha():
                index.setdefault(text[:cut], []).extend(ids)
    return index


def extended(tokenizer: Any, sequence: tuple[int, ...]) -> set[tuple[int, ...]]:
    """The sequence with its final piece swapped for a longer one ("Hina Ame|en" -> "Hina Ame|ens"): once the
    exact final piece is banned, a model completes the name with a suffix instead, and the name is out."""
    last = tokenizer.decode([sequence[-1]])
    return {(*sequence[:-1], i) for i in extension_index(tokenizer).get(last, [])} if len(last) >= 2 else set()


def segmentations(tokenizer: Any, text: str, limit: int = MAX_PER_STRING) -> list[list[int]]:
    """The canonical encoding first, then the shortest alternatives (bounded: names can have thousands)."""
    canonical = tokenizer.encode(text, add_special_tokens=False)
    if not canonical:
        return []
    table, longest = surfaces(tokenizer)
    max_len = len(canonical) + MAX_EXTRA_TOKENS
    n = len(text)
    # the pieces that start at each position, longer first (looked up once, not at every visit of the walk)
    edges = [[(end, table[piece][0]) for end in range(min(n, pos + longest), pos, -1)
              if (piece := text[pos:end]) in table] for pos in range(n)]
    reach = [1 << 30] * n + [0]  # fewest tokens to finish from each position
    for pos in range(n - 1, -1, -1):
        reach[pos] = min((1 + reach[end] for end, _ in edges[pos]), default=1 << 30)
    found: list[list[int]] = [list(canonical)]
    seen = {tuple(canonical)}

    def walk(pos: int, prefix: list[int]) -> None:
        if len(found) >= _EXPLORE:
            return
        if pos == n:
            if tuple(prefix) not in seen:
                seen.add(tuple(prefix))
                found.append(list(prefix))
            return
        for end, token in edges[pos]:
            if len(prefix) + 1 + reach[end] <= max_len:
                walk(end, [*prefix, token])

    walk(0, [])
    return sorted(found, key=len)[:limit]


@functools.lru_cache(maxsize=32768)
def _sequences(tokenizer: Any, string: str) -> frozenset[tuple[int, ...]]:
    """Cached: a PATCH, a recompile and the knowledge-expansion version spell the same names again."""
    return frozenset(tuple(seq) for form in (string, " " + string) for seq in segmentations(tokenizer, form))


def sequences_for(tokenizer: Any, strings: Iterable[str]) -> dict[str, set[tuple[int, ...]]]:
    """Each string's sequences, at the start of text and after a space."""
    return {s: set(_sequences(tokenizer, s)) for s in strings}
