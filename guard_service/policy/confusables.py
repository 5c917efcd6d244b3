"""Characters that imitate others (Unicode TR39 confusables), folded to what they imitate before a name is looked
for: "Who wrote the Ηarry Ρotter books?" with a Greek Eta and Rho, "Ј.К. Rowling" with Cyrillic letters,
fullwidth "Ｈａｒｒｙ", mathematical "𝐇𝐚𝐫𝐫𝐲", "H̲a̲r̲r̲y̲" under combining marks.

The prototypes are Unicode's own (`confusables.txt`, as the `confusable_homoglyphs` wheel ships it in JSON):
each character mapped to the ASCII letters it is confusable with. Only words that imitate Latin text are
folded: a word that mixes ASCII letters with look-alikes of another script ("Ηarry"), or a word written wholly
in look-alikes inside Latin text. A Russian sentence keeps its Cyrillic (the sound keys read it:
policy/sound.py), and an accented Latin letter ("Brontë") is not a look-alike. Used by the prompt classifier
(`fold`, every segment) and the output side (`fold_same_length`: offsets stay those of the generated text)."""

from __future__ import annotations

import functools
import json
import unicodedata
from importlib import resources

import regex

_WORD = regex.compile(r"[\p{L}\p{M}\p{N}]+")
_DECORATION = regex.compile(r"(?<=[A-Za-z])\p{Mn}+")  # marks NFKC left uncomposed on an ASCII letter: "H̲"


@functools.cache
def prototypes() -> dict[str, str]:
    """Non-ASCII character -> the ASCII letters it imitates ("Η" -> "H", "р" -> "p", "ｍ" -> "m")."""
    table = json.loads(resources.files("confusable_homoglyphs").joinpath("confusables.json").read_text("utf-8"))
    out: dict[str, str] = {}
    for char, glyphs in table.items():
        latin = [g["c"] for g in glyphs if g["c"].isascii() and g["c"].isalpha()]
        if not char.isascii() and latin:
            out[char] = latin[0]
    return out


def _fold_word(word: str, latin: bool, same_length: bool) -> str:
    table = prototypes()
    if not any(c in table for c in word):
        return word
    ascii_letters = sum(c.isascii() and c.isalpha() for c in word)
    if not ascii_letters and not (latin and all(c in table or c.isascii() for c in word)):
        return word  # a word of another script, in text of that script
    if same_length:
        return "".join(table[c] if c in table and len(table[c]) == 1 else c for c in word)
    return "".join(table.get(c, c) for c in word)


def latin_text(text: str) -> bool:
    """Whether most of `text`'s letters are ASCII (a word wholly of look-alikes in it imitates Latin)."""
    letters = [c for c in text if c.isalpha()]
    return sum(c.isascii() for c in letters) * 2 >= len(letters)


def fold(text: str) -> str:
    """`text` with every imitation folded to what it imitates (NFKC, combining decoration dropped, look-alike
    letters of Latin words mapped to ASCII); ASCII text is returned as it is."""
    if text.isascii():
        return text
    text = _DECORATION.sub("", unicodedata.normalize("NFKC", text))
    latin = latin_text(text)
    return _WORD.sub(lambda m: _fold_word(m.group(), latin, False), text)


def fold_same_length(text: str, latin: bool | None = None) -> str:
    """`fold` for text whose offsets matter: one character for one (a look-alike with a one-letter prototype,
    a fullwidth or mathematical letter), nothing dropped; combining decoration stays. `latin`: whether the
    text `text` is part of is Latin text (default: whether `text` is)."""
    if text.isascii():
        return text
    text = "".join(n if len(n := unicodedata.normalize("NFKC", c)) == 1 and n.isascii() else c for c in text)
    latin = latin_text(text) if latin is None else latin
    return _WORD.sub(lambda m: _fold_word(m.group(), latin, True), text)
