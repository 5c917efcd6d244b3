"""Sound keys: how a name reads when a translator writes it in another script. One owner of the rules: the
compiler records each whole name's keys (`forms`), guards/transliteration.py matches text against them.

Every word is romanized (anyascii), with each script's own conventions folded in (Greek μπ is b, Cyrillic ч and
Devanagari च are "ch" as in "church", Arabic and Devanagari leave short vowels unwritten), then reduced to
consonant classes: p/b, t/d, k/g/h, s/z/j/sh/ch, r/l, f/v/w, m, n; vowels dropped; a class repeated by adjacent
letters counts once ("tt"), not across a vowel ("Hawking" is not "King"). "Harry Potter", "Гарри Поттер",
"Χάρι Πότερ", "हैरी पॉटर" and "هاري بوتر" all read KR PTR. A Han, kana or hangul character is one syllable,
keyed by its initial consonant ("哈利波特": Ha Li Bo Te, K R P T).

An English spelling does not say how a translator will hear it, so a name's word has several keys: "ch" as in
"Christina" or "Chan", a w as a consonant (Свифт) or a vowel (Σουίφτ), a Latin -us ending kept or dropped
(Конфуций); run together for CJK, an r that ends a syllable written or not (波特: only Chinese leaves it out).
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from collections.abc import Iterable

from anyascii import anyascii

from guard_service.policy.artifacts import SoundForm

MIN_CLASSES = 4  # consonant classes in a whole name's key: fewer match too many words by sound alone
_DIGRAPHS = (("dzh", "j"), ("sch", "s"), ("sh", "s"), ("zh", "j"), ("kh", "h"), ("wh", "w"),
             ("ph", "f"), ("th", "t"), ("gh", "h"), ("ck", "k"), ("ts", "s"), ("tz", "s"), ("dj", "j"),
             ("ng", "n"), ("nk", "n"), ("qu", "k"), ("x", "ks"))
_CLASSES = {**dict.fromkeys("pb", "P"), **dict.fromkeys("td", "T"), **dict.fromkeys("kgcqh", "K"),
            **dict.fromkeys("sjzC", "S"), **dict.fromkeys("rl", "R"), **dict.fromkeys("fvw", "F"), "m": "M",
            "n": "N"}  # C: a "ch" said as in "church"
_VOWELS = set("aeiouy")
# Pinyin initials (how anyascii writes a Han character) -> classes. j/q/x render "s", "ch" and "k" sounds
# alike ("Kissinger": 基辛格, Ji Xin Ge; "Hilton": 希尔顿, Xi Er Dun): either.
_PINYIN = (("zh", "S"), ("ch", "S"), ("sh", "S"), ("b", "P"), ("p", "P"), ("d", "T"), ("t", "T"), ("g", "K"),
           ("k", "K"), ("h", "K"), ("j", "SK"), ("q", "SK"), ("x", "SK"), ("z", "S"), ("c", "S"), ("s", "S"),
           ("l", "R"), ("r", "R"), ("m", "M"), ("n", "N"), ("f", "F"), ("w", "F"), ("v", "F"))


def cjk(text: str) -> bool:
    """Whether `text` holds a Han, kana or hangul character: scripts that need not separate words."""
    return any(unicodedata.name(c, "").startswith(_CJK) for c in text if not c.isascii())


_CJK = ("CJK UNIFIED", "CJK COMPATIBILITY IDEOGRAPH", "HIRAGANA", "KATAKANA", "HANGUL")


def _script(word: str) -> str:
    name = unicodedata.name(word[0], "") if word else ""
    return next((s for s in ("CYRILLIC", "GREEK", "ARABIC", "DEVANAGARI") if name.startswith(s)), "LATIN")


def loose(word: str) -> bool:
    """Whether `word`'s script leaves short vowels unwritten (Arabic; Devanagari's inherent a): two of its
    consonants side by side may have had a vowel between them."""
    return _script(word) in ("ARABIC", "DEVANAGARI")


def _romanized(word: str, ch: str = "k") -> str:
    """ASCII letters, each script's conventions folded in; a Latin "ch" becomes `ch` ("k", or "C" as in
    "church")."""
    script = _script(word)
    s = re.sub(r"[^a-z]", "", anyascii(word).casefold())
    if script == "GREEK":
        s = re.sub(r"^goy", "u", s).replace("oy", "u").replace("mp", "b").replace("gk", "g")
        s = re.sub(r"(?:^|(?<=[^aeiouy]))nt", "d", s)  # ντ is d first and after a consonant ("Λεονάρντο")
    elif script == "CYRILLIC":
        s = s.replace("ch", "C")
    elif script == "ARABIC":
        s = s.replace("w", "u").replace("gh", "g")
        s = re.sub(r"h$", "", s)  # a final ه is a vowel
    elif script == "DEVANAGARI":
        s = re.sub(r"m(?=[^aeiouy])", "n", s).replace("ch", "C").replace("c", "C").replace("vh", "w")  # ं च व्ह
    else:
        s = s.replace("sch", "sh").replace("ch", "C" if ch == "C" else "k")
    s = re.sub(r"c(?=[eiy])", "s", s)  # a soft c ("Vincent")
    s = re.sub(r"ng(?=[eiy])", "nj", s)  # a soft g after n ("Granger": Грейнджер)
    for a, b in _DIGRAPHS:
        s = s.replace(a, b)
    return s


def _classes(s: str, coda_r: bool = True, w_vowel: bool = False) -> str:
    """`s` (romanized) as consonant classes. Without `coda_r`, an r that ends a syllable is dropped; with
    `w_vowel`, a w is a vowel."""
    out: list[str] = []
    prev = None
    for i, ch in enumerate(s):
        if ch == "w" and (w_vowel or (i and s[i - 1] in _VOWELS)):
            prev = None  # a vowel there ("Rowling": Роулинг)
            continue
        if ch == "r" and not coda_r and i and s[i - 1] in _VOWELS:
            after = s[i + 1:].lstrip("r")
            if not after or after[0] not in _VOWELS:
                continue
        c = _CLASSES.get(ch)
        if c is not None and c != prev:
            out.append(c)
        prev = c
    return "".join(out)


def squeezed(key: str) -> str:
    """A key with a class repeated across a vowel counted once: how a script that leaves vowels unwritten may
    have run two consonants together ("Justin": جاستن, jstn)."""
    return "".join(k for k, _ in itertools.groupby(key))


@functools.lru_cache(maxsize=65536)
def sound_key(word: str) -> str:
    """One word of text, in any alphabetic script: "Поттер" -> "PTR"."""
    return _classes(_romanized(word))


@functools.lru_cache(maxsize=65536)
def syllable_key(char: str) -> tuple[str, ...]:
    """One Han (or kana, hangul) character: the classes its initial consonant may stand for, each with N for a
    final n/ng; R for "er" (尔, an English r); "" for a vowel."""
    s = re.sub(r"[^a-z]", "", anyascii(char).casefold())
    if s == "er":
        return ("R",)
    heads = next((c for p, c in _PINYIN if s.startswith(p)), "") or " "
    return tuple(h.strip() + ("N" if s.endswith(("n", "ng")) and len(s) > 1 and h != "N" else "") for h in heads)


def word_options(word: str) -> tuple[tuple[str, str], tuple[str, ...]]:
    """One word of a name: its keys as spelled and without the r's that end its syllables (what a character-
    by-character CJK rendering may have), and every key a translation in an alphabet may have."""
    spellings = dict.fromkeys(_romanized(word, ch) for ch in ("k", "C"))
    # A Latin -us ending is dropped where a name is adapted (Confucius: Конфуций, Columbus: Колумб).
    spellings.update(dict.fromkeys(sp[:-2] for sp in list(spellings) if sp.endswith("us") and len(sp) > 5))
    keys = [_classes(s, w_vowel=w_vowel) for s in spellings for w_vowel in (False, True)]
    first = next(iter(spellings))  # as spelled, "ch" as in "Christina"
    return (_classes(first), _classes(first, coda_r=False)), tuple(dict.fromkeys(keys))


def form(name: str) -> SoundForm | None:
    """A whole name's sound keys, or None when it says too little by sound to be matched on: under
    `MIN_CLASSES` classes (or just that many, in words of two), or a word with no consonant."""
    options = [word_options(w) for w in re.findall(r"[^\W\d_]+", name)]
    if not options or not all(all(o[0]) for o in options):
        return None
    joined = ["".join(o[0][k] for o in options) for k in (0, 1)]
    if len(joined[0]) < MIN_CLASSES or (len(joined[0]) == MIN_CLASSES and max(len(o[0][0]) for o in options) < 3):
        return None  # two words of two consonants each read like two common short words ("ghar par": Halle Berry)
    return SoundForm(form=f"sound:{name}", name=name, keys=[list(o[1]) for o in options],
                     joined=[j for j in dict.fromkeys(joined) if _specific_in_cjk(j)])


def _specific_in_cjk(key: str) -> bool:
    """Whether a name's key run together says enough to be matched character by character: three of its
    classes other than S and K, the initials of most Chinese syllables (Jackie Chan, SKKN, is spelled by
    "有几颗行" in an ordinary question)."""
    return len(key) >= MIN_CLASSES and sum(c not in "SK" for c in key) >= 3


def forms(names: Iterable[str], removed: Iterable[str] = ()) -> list[SoundForm]:
    """The compiler's cross-lingual forms of a policy's whole names, less those an operator removed."""
    drop = {r.casefold() for r in removed}
    out: dict[str, SoundForm] = {}
    for name in names:
        f = form(name)
        if f is not None and f.form.casefold() not in drop:
            out.setdefault(f.form.casefold(), f)
    return list(out.values())
