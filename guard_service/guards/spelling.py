"""Names spelled any way: word by word or letter by letter, whatever separates them ("J K Rowling", "Harry-Potter",
"H a r r y"), truncated or bent ("Hermion", "J.K.R", "J.K. Row", "Harry Potts"), and misspelled ("Xin Le Wiliams",
"Basil Mahfuz Al-Kuwaiiti": `misspelled`).

The output leak detector uses it on generated text (every name of a policy, its distinctive words included);
the name detector on prompts (whole names only: one word of a name alone is a namesake's as often as the
target's). One set of rules, `_judge`, says what counts as naming. Also the text normal forms the prompt
detectors compare in (`words`, `squash`).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rapidfuzz.distance import OSA

from guard_service.policy.artifacts import ForbiddenItem
from guard_service.policy.forbidden import NAME_ORIGINS

_UNIT = re.compile(r"[^\W_]+")
SEPARATOR = re.compile(r"[\s.\-'’·]{1,3}")  # what may stand between the words (or letters) of a name


@dataclass(frozen=True)
class _Name:
    squashed: str  # casefolded letters and digits
    bounds: tuple[int, ...]  # end offset of each of its words in `squashed`
    words: tuple[str, ...] = ()  # its words, casefolded
    tag: str = ""  # whose name it is, where one index holds several policies' names (`merge`)


def squash(text: str) -> str:
    """Letters and digits only (of any script), casefolded: "H-a_r r.y" -> "harry"."""
    return re.sub(r"[\W_]", "", text.casefold())


def words(text: str) -> str:
    """Casefolded words (of any script) separated by single spaces, padded with a space each side (for
    whole-word `in`)."""
    return " " + re.sub(r"[\W_]+", " ", text.casefold()).strip() + " "


NameIndex = dict[str, tuple["_Name", ...]]


def name_index(items: Iterable[ForbiddenItem], whole_only: bool = False) -> NameIndex:
    """A policy's names (target, aliases, expanded names and, unless `whole_only`, their distinctive words)
    by first letter. Build once per policy version."""
    out: dict[str, list[_Name]] = {}
    seen = set()
    for item in items:
        if item.origin not in NAME_ORIGINS or (whole_only and item.split):
            continue
        units = [u.casefold() for u in _UNIT.findall(item.text)]
        squashed = "".join(units)
        if len(squashed) < 3 or squashed in seen:
            continue
        seen.add(squashed)
        bounds = tuple(sum(len(u) for u in units[:i + 1]) for i in range(len(units)))
        out.setdefault(squashed[0], []).append(_Name(squashed, bounds, tuple(units)))
    return {k: tuple(v) for k, v in out.items()}


def merge(indexes: Iterable[tuple[str, dict[Any, tuple[_Name, ...]]]]) -> dict[Any, tuple[_Name, ...]]:
    """Several policies' indexes (a `NameIndex` or a `TypoIndex` each) as one, each name tagged with its
    policy: a scan then reads the text once for all of them, not once per policy."""
    out: dict[Any, list[_Name]] = {}
    for tag, index in indexes:
        for key, names in index.items():
            out.setdefault(key, []).extend(dataclasses.replace(n, tag=tag) for n in names)
    return {k: tuple(v) for k, v in out.items()}


Span = tuple[int, int, str]  # start, end, the tag of the name found there


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _judge(name: _Name, covered: int, extra: int) -> bool:
    """Whether output that matched the first `covered` characters of `name`, its last word then going on with
    `extra` other characters, names it: the whole name (or a longer name plus a letter: "Hina Ameens"), most of
    a one-word name ("Hermion", "Hogwar"), or a name's first word(s) and the start of the next ("J.K.R",
    "Harry Potts"). A one-word name plus a letter is often another word ("Potter" -> "pottery"), and a name's
    first words alone ("Harry") are not the name."""
    total = len(name.squashed)
    if covered >= total:
        return extra == 0 or (extra == 1 and len(name.bounds) > 1)
    k = next(i for i, b in enumerate(name.bounds) if b > covered)
    before = name.bounds[k - 1] if k else 0
    into = covered - before
    if into == 0 or extra > 1:
        return False
    if k == 0:  # inside the first word: only a one-word name, and most of it ("Hermi", not "Just" for "Justin")
        return len(name.bounds) == 1 and into >= max(5, math.ceil(0.6 * name.bounds[0]))
    return (k >= 2 or before >= 4) and (extra == 0 or into >= 3)


def _walk(text: str, units: list[Unit], i: int, name: _Name, final: bool) -> int | None:
    """End offset of a spelling of `name` that starts at unit `i`, or None (no match, or not decidable yet)."""
    pos, last_end = 0, None
    for j in range(i, len(units)):
        word, w_start, w_end = units[j]
        if j > i and not SEPARATOR.fullmatch(text[units[j - 1][2]:w_start]):
            break
        open_end = w_end == len(text) and not final  # the word may still grow
        if name.squashed.startswith(word, pos):
            pos += len(word)
            last_end = None if open_end else w_end
            if open_end or pos == len(name.squashed):
                break
            continue
        lcp = _common_prefix(word, name.squashed[pos:])
        if lcp and not open_end and _judge(name, pos + lcp, len(word) - lcp):
            return w_end
        break
    return last_end if last_end is not None and pos and _judge(name, pos, 0) else None


Unit = tuple[str, int, int]  # casefolded word, start, end


def _first_at(units: list[Unit], start_at: int) -> int:
    """The first unit that begins at or after `start_at` (a stream's scan only reads its new words)."""
    return bisect.bisect_left(units, start_at, key=lambda u: u[1])


class Units(list[Unit]):
    """A text's units, and where each first letter occurs (so a search visits only the words a name could start
    at, not every word once per policy)."""

    @functools.cached_property
    def by_letter(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, (word, _, _) in enumerate(self):
            out.setdefault(word[0], []).append(i)
        return out


def units_of(text: str) -> Units:
    return Units((m.group().casefold(), m.start(), m.end()) for m in _UNIT.finditer(text))


def _spans(units: Units, start_at: int, positions: Iterable[int], candidates: Callable[[int], Iterable[_Name]],
           end_of: Callable[[int, _Name], int | None]) -> list[Span]:
    """For each unit at `positions` (those a name could start at) from `start_at` on, the longest match of each
    tag's candidate names that starts there (`end_of`: its end, or None); a tag's match hides its later matches
    inside it."""
    found: list[Span] = []
    last: dict[str, int] = {}
    first = _first_at(units, start_at)
    for i in sorted({i for i in positions if i >= first}):
        start = units[i][1]
        ends: dict[str, int] = {}
        for name in candidates(i):
            if start >= last.get(name.tag, -1) and (e := end_of(i, name)) is not None:
                ends[name.tag] = max(e, ends.get(name.tag, e))
        for tag, end in ends.items():
            found.append((start, end, tag))
            last[tag] = end
    return found


def name_leaks(text: str, index: NameIndex, start_at: int, final: bool, units: Units | None = None) -> list[Span]:
    """(start, end, tag) of names spelled word by word (or letter by letter) in `text`, in words that begin
    at or after `start_at`. Unless `final`, a match whose last word ends the text (and may still grow) waits.
    `units`: `units_of(text)`, when the caller already has them."""
    units = units_of(text) if units is None else units

    def candidates(i: int) -> Iterable[_Name]:
        # Only a name that starts with this word's first three letters (all of a shorter word: one letter of a
        # spelled-out name, an initial) can be spelled from here: `_judge` wants more of a name than that.
        head = units[i][0][:3]
        return [n for n in index.get(head[0], ()) if n.squashed.startswith(head)]

    positions = (i for letter in index if letter in units.by_letter for i in units.by_letter[letter])
    return _spans(units, start_at, positions, candidates, lambda i, name: _walk(text, units, i, name, final))


def _typos(letters: int) -> int:
    """Edits a typist makes in a word of this many letters: none in initials and two-letter words, one up to
    five letters, two up to eight, three beyond."""
    return 0 if letters <= 2 else 1 if letters <= 5 else 2 if letters <= 8 else 3


def _joined(text: str, units: list[Unit], i: int, n: int) -> bool:
    """Whether units i..i+n-1 exist and stand together as one name (only name separators between them)."""
    return i + n <= len(units) and all(SEPARATOR.fullmatch(text[units[j - 1][2]:units[j][1]])
                                       for j in range(i + 1, i + n))


TypoIndex = dict[tuple[int, str], tuple[_Name, ...]]


def typo_index(index: NameIndex) -> TypoIndex:
    """A policy's whole names of two or more words by the first letter of their first and of their second word
    (a typo may change one of them, not both). Build once per policy version."""
    out: dict[tuple[int, str], list[_Name]] = {}
    for name in (n for names in index.values() for n in names):
        parts = name.words
        if len(parts) >= 2:
            for k in (0, 1):
                out.setdefault((k, parts[k][0]), []).append(name)
    return {key: tuple(v) for key, v in out.items()}


def _misspells(text: str, units: list[Unit], i: int, name: _Name) -> int:
    """How many units from unit i spell `name` with typos (0: none). Word by word, each word within its own
    typo budget and at most one word's first letter changed (namesakes differ there: "Kris" / "Kylie"
    Jenner); or, where a typo moved a word boundary ("Al-KKuuwaii", "BenDavid"), the joined letters within a
    fifth of the name's length (at most 3 edits: not a whole word swapped, "Alejandro Cordero / Escobedo
    Rodriguez"). Calibrated on TOFU and RWKU names (`bench/name_typos.py`): other authors, neighbours and
    other targets stay unmatched."""
    parts = name.words
    k = len(parts)
    first, budget0 = units[i][0], _typos(len(parts[0]))
    if OSA.distance(first, parts[0], score_cutoff=budget0) > budget0 and not first.startswith(parts[0][:3]):
        return 0  # both ways below start with the first word close to the name's: the common case, one distance
    if _joined(text, units, i, k):
        window = [u for u, _, _ in units[i:i + k]]
        edits = [OSA.distance(u, p, score_cutoff=_typos(len(p))) for u, p in zip(window, parts, strict=True)]
        if (all(d <= _typos(len(p)) for d, p in zip(edits, parts, strict=True))
                and sum(u[0] != p[0] for u, p in zip(window, parts, strict=True)) <= 1
                and sum(edits) <= math.ceil(0.3 * len(name.squashed))):
            return k
    budget = min(sum(_typos(len(p)) for p in parts), len(name.squashed) // 5, 3)
    for n in ((k - 1, k, k + 1) if k >= 3 else (k, k + 1)):
        if _joined(text, units, i, n):
            joined = "".join(u for u, _, _ in units[i:i + n])
            if OSA.distance(joined, name.squashed, score_cutoff=budget) <= budget:
                return n
    return 0


def _start_within(word: str, target: str, budget: int) -> bool:
    """Whether `word`, which may still grow, is within `budget` edits of some start of `target`."""
    return any(OSA.distance(word, target[:n], score_cutoff=budget) <= budget
               for n in range(max(0, len(word) - budget), min(len(target), len(word) + budget) + 1))


def may_misspell(units: list[Unit], i: int, name: _Name, open_end: bool) -> bool:
    """Whether units i.. (the text's last ones; the last still growing if `open_end`) may yet become a spelling
    of `name` with typos as `_misspells` judges one: the first word close to the name's (or sharing its first three
    letters), each later word within its word's budget, or all of them run together within the joined budget; at
    most one unit more than the name has words. The output guard holds such a tail back until it is decided."""
    parts, got = name.words, [u for u, _, _ in units[i:]]
    if len(parts) < 2 or len(got) > len(parts) + 1:
        return False
    last = len(got) - 1

    def close(j: int, p: str) -> bool:
        w, b = got[j], _typos(len(p))
        # A word still growing is close if it is within the budget of the name word's start; up to three letters
        # it must also begin as that word does (any short start is within two edits of a long word's start): a
        # typo in a name's first letter may then show its first letters before the rest decides it.
        growing = open_end and j == last and (len(w) > 3 or w[0] == p[0])
        return (OSA.distance(w, p, score_cutoff=b) <= b or (growing and _start_within(w, p, b))
                or (j == 0 and w.startswith(p[:3])))

    if not close(0, parts[0]):
        return False
    if all(close(j, p) for j, p in zip(range(1, len(got)), parts[1:], strict=False)):
        return True
    budget = min(sum(_typos(len(p)) for p in parts), len(name.squashed) // 5, 3)
    joined = "".join(got)
    return (_start_within(joined, name.squashed, budget) if open_end
            else OSA.distance(joined, name.squashed[:len(joined)], score_cutoff=budget) <= budget)


class Prefixes:
    """Names (squashed) in order, to ask whether a text's tail may still grow into one (the output guard's
    partial release): one binary search, however many names."""

    def __init__(self, names: Iterable[str]):
        self.names = sorted(set(names))

    def begins(self, squashed: str) -> bool:
        at = bisect.bisect_left(self.names, squashed)
        return bool(squashed) and at < len(self.names) and self.names[at].startswith(squashed)


def trailing_chain(text: str, units: list[Unit], limit: int) -> tuple[int, bool]:
    """The first of the text's last units (at most `limit`) that stand together as a name could (only name
    separators between them and after the last), and whether the last may still grow (nothing after it);
    (len(units), False) when the text ends in something no name continues across."""
    if not units:
        return 0, False
    after = text[units[-1][2]:]
    if after and not SEPARATOR.fullmatch(after):
        return len(units), False
    i = len(units) - 1
    while i > 0 and len(units) - i < limit and SEPARATOR.fullmatch(text[units[i - 1][2]:units[i][1]]):
        i -= 1
    return i, not after


def misspelled(text: str, index: TypoIndex, start_at: int, final: bool, units: Units | None = None) -> list[Span]:
    """(start, end, tag) of whole names of two or more words written with typos (one word of a name alone is
    too often another word: "Rowling" / "rolling"), in words that begin at or after `start_at`; exact
    spellings are `name_leaks`'. Unless `final`, a match whose last word ends the text (and may still grow)
    waits."""
    units = units_of(text) if units is None else units

    def candidates(i: int) -> Iterable[_Name]:
        second = units[i + 1][0][0] if i + 1 < len(units) else ""
        return dict.fromkeys(index.get((0, units[i][0][0]), ()) + index.get((1, second), ()))

    def end_of(i: int, name: _Name) -> int | None:
        n = _misspells(text, units, i, name)
        return units[i + n - 1][2] if n and (final or units[i + n - 1][2] < len(text)) else None

    # A typo may change the first letter of a name's first or second word, not both.
    positions = (i - k for k, letter in index if letter in units.by_letter for i in units.by_letter[letter])
    return _spans(units, start_at, positions, candidates, end_of)
