"""Names written in another script: "Гарри Поттер", "哈利·波特", "हैरी पॉटर", "Χάρι Πότερ", "هاري بوتر", and
Latin with diacritics ("Hárry Pöttér"), matched by sound (policy/sound.py) against the keys the compiler
recorded for each whole name (forbidden.json's `crosslingual`; an operator removes a name's entry to stop it).

Scripts that separate words are compared word by word, the last word allowed one more class (an inflection:
"Поттером"); Chinese, Japanese and Korean, which need not, character by character ("哈利波特"), at least
`MIN_CJK_CHARS` of them. Only words outside ASCII take part: in English text a sound key would match ordinary
words ("carpet" reads KRPT), and spelling.py's exact and misspelled matchers read it already. Calibrated by
`python -m bench.name_typos` (names by sound against each other and the multilingual reference prompts).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import regex

from guard_service.guards.spelling import Span
from guard_service.policy.artifacts import SoundForm
from guard_service.policy.sound import cjk, loose, sound_key, squeezed, syllable_key

MIN_CJK_CHARS = 3
CJK_PENDING = 16  # trailing units a name by sound may still be completing (CJK: one a character)
_WORD = regex.compile(r"\p{L}[\p{L}\p{M}]*")  # letters and the marks that join them (Devanagari's vowel signs)
_SEPARATOR = re.compile(r"[\s.\-'’·・‧]{1,3}")  # between the words of a name (interpuncts in CJK)


@dataclass(frozen=True)
class SoundName:
    words: tuple[frozenset[str], ...]  # each word's keys (`sound.word_options`)
    squeezed: tuple[frozenset[str], ...]  # the same, `sound.squeezed` (for scripts that omit vowels)
    joined: tuple[str, ...]  # the whole name's keys run together (CJK)
    tag: str = ""  # whose name it is, where one index holds several policies' names


def sound_index(forms: Iterable[SoundForm], tag: str = "") -> tuple[SoundName, ...]:
    """A policy's names by sound, from the keys its compile recorded. Build once per policy version."""
    return tuple(SoundName(tuple(frozenset(k) for k in f.keys), tuple(frozenset(map(squeezed, k)) for k in f.keys),
                           tuple(f.joined), tag) for f in forms)


@dataclass(frozen=True)
class Unit:
    keys: tuple[str, ...]  # a word's key; a CJK character's possible keys
    start: int
    end: int
    cjk: bool = False
    loose: bool = False  # a script that omits vowels (`sound.loose`)


def units(text: str) -> list[Unit]:
    """The sound keys of the words outside ASCII (each CJK character alone), with their offsets."""
    out: list[Unit] = []
    for m in _WORD.finditer(text):
        word = m.group()
        if word.isascii():
            continue
        if cjk(word):
            out += [Unit(syllable_key(ch), m.start() + i, m.start() + i + 1, cjk=True)
                    for i, ch in enumerate(word) if cjk(ch)]
        else:
            out.append(Unit((sound_key(word),), m.start(), m.end(), loose=loose(word)))
    return out


def _joined(text: str, a: Unit, b: Unit) -> bool:
    between = text[a.end:b.start]
    return (between == "" and a.cjk and b.cjk) or bool(_SEPARATOR.fullmatch(between))


def _word_end(text: str, us: list[Unit], i: int, name: SoundName) -> int | None:
    k = len(name.words)
    if i + k > len(us) or any(u.cjk for u in us[i:i + k]):
        return None
    for j in range(k):
        u = us[i + j]
        got = u.keys[0]
        want = name.words[j] | name.squeezed[j] if u.loose else name.words[j]
        # The last word may have one more class (an inflection: "Поттером").
        if got not in want and not (j == k - 1 and len(got) >= 3 and got[:-1] in want):
            return None
        if j and not _joined(text, us[i + j - 1], u):
            return None
    return us[i + k - 1].end


def _cjk_walk(text: str, us: list[Unit], i: int, name: SoundName) -> Iterator[tuple[int, set[str]]]:
    """CJK characters from `i` on, standing together, while their readings run together still begin one of the
    name's joined keys: (character, those readings so far). Each character may stand for more than one class:
    only the readings that still begin a key of the name are followed."""
    keys = {""}
    for j in range(i, len(us)):
        if not us[j].cjk or (j > i and not _joined(text, us[j - 1], us[j])):
            return
        keys = {k + a for k in keys for a in us[j].keys if any(w.startswith(k + a) for w in name.joined)}
        if not keys:
            return
        yield j, keys


def _cjk_end(text: str, us: list[Unit], i: int, name: SoundName) -> int | None:
    """Characters from `i` on whose keys, run together, spell one of the name's."""
    return next((us[j].end for j, keys in _cjk_walk(text, us, i, name)
                 if j - i + 1 >= MIN_CJK_CHARS and keys & set(name.joined)), None)


def transliterated(text: str, names: tuple[SoundName, ...], start_at: int = 0, final: bool = True,
                   us: list[Unit] | None = None) -> list[Span]:
    """(start, end, tag) of names written by sound in another script, in words that begin at or after
    `start_at`. Unless `final`, a match that ends the text (and may still grow) waits. `us`: `units(text)`,
    when the caller already has them."""
    if not names or text.isascii():
        return []
    us = units(text) if us is None else us
    found: list[Span] = []
    last: dict[str, int] = {}
    for i, u in enumerate(us):
        if u.start < start_at or not any(u.keys):
            continue
        for name in names:
            if u.start < last.get(name.tag, -1):
                continue
            end = (_cjk_end if u.cjk else _word_end)(text, us, i, name)
            if end is not None and (final or end < len(text)):
                found.append((u.start, end, name.tag))
                last[name.tag] = end
    return found


def _may_continue(text: str, us: list[Unit], i: int, name: SoundName, open_end: bool) -> bool:
    """Whether units i.. (the text's last ones) may yet spell `name` by sound: each word's key one of the name's
    word's (the last, if still growing, the start of one); CJK characters whose readings still begin one of the
    name's joined keys."""
    if us[i].cjk:
        return max((j for j, _ in _cjk_walk(text, us, i, name)), default=-1) == len(us) - 1
    if len(us) - i > len(name.words):
        return False
    for j in range(i, len(us)):
        u, want = us[j], name.words[j - i] | name.squeezed[j - i] if us[j].loose else name.words[j - i]
        if u.cjk or (j > i and not _joined(text, us[j - 1], u)):
            return False
        got = u.keys[0]
        if got not in want and not (open_end and j == len(us) - 1 and any(w.startswith(got) for w in want)):
            return False
    return True


def pending(text: str, names: tuple[SoundName, ...], us: list[Unit] | None = None) -> int | None:
    """Where the earliest of the text's last units begins that may still grow into a name written by sound (the
    output guard holds the text from there until it is decided), or None."""
    if not names or text.isascii():
        return None
    us = units(text) if us is None else us
    if not us or (us[-1].end < len(text) and not _SEPARATOR.fullmatch(text[us[-1].end:])):
        return None
    open_end, first = us[-1].end == len(text), len(us) - 1
    while first > 0 and len(us) - first < CJK_PENDING and _joined(text, us[first - 1], us[first]):
        first -= 1
    for i in range(first, len(us)):
        if any(_may_continue(text, us, i, name, open_end) for name in names):
            return us[i].start
    return None
