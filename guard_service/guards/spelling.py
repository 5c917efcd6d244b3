"""Names spelled any way: word by word or letter by letter, whatever separates them ("J K Rowling", "Harry-Potter",
"H a r r y"), and truncated or bent ("Hermion", "J.K.R", "J.K. Row", "Harry Potts").

The output leak detector uses it on generated text (every name of a policy, its distinctive words included);
the name detector on prompts (whole names only: one word of a name alone is a namesake's as often as the
target's). One set of rules, `_judge`, says what counts as naming. Also the text normal forms the prompt
detectors compare in (`words`, `squash`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from guard_service.policy.artifacts import ForbiddenItem
from guard_service.policy.forbidden import NAME_ORIGINS

_UNIT = re.compile(r"[^\W_]+")
_SEPARATOR = re.compile(r"[\s.\-'’·]{1,3}")  # what may stand between the words (or letters) of a name


@dataclass(frozen=True)
class _Name:
    squashed: str  # casefolded letters and digits
    bounds: tuple[int, ...]  # end offset of each of its words in `squashed`


def squash(text: str) -> str:
    """Letters and digits only, casefolded: "H-a_r r.y" -> "harry"."""
    return re.sub(r"[^0-9a-z]", "", text.casefold())


def words(text: str) -> str:
    """Casefolded words separated by single spaces, padded with a space each side (for whole-word `in`)."""
    return " " + re.sub(r"[^0-9a-z]+", " ", text.casefold()).strip() + " "


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
        out.setdefault(squashed[0], []).append(_Name(squashed, bounds))
    return {k: tuple(v) for k, v in out.items()}


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
        if j > i and not _SEPARATOR.fullmatch(text[units[j - 1][2]:w_start]):
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


def units_of(text: str) -> list[Unit]:
    return [(m.group().casefold(), m.start(), m.end()) for m in _UNIT.finditer(text)]


def name_leaks(text: str, index: dict[str, tuple[_Name, ...]], start_at: int, final: bool,
               units: list[Unit] | None = None) -> list[tuple[int, int]]:
    """(start, end) of names spelled word by word (or letter by letter) in `text`, in words that begin at or
    after `start_at`. Unless `final`, a match whose last word ends the text (and may still grow) waits.
    `units`: `units_of(text)`, when the caller already has them."""
    units = units_of(text) if units is None else units
    found: list[tuple[int, int]] = []
    for i, (first, start, _) in enumerate(units):
        if start < start_at or (found and start < found[-1][1]):
            continue
        ends = [e for name in index.get(first[0], ()) if (e := _walk(text, units, i, name, final)) is not None]
        if ends:
            found.append((start, max(ends)))
    return found
