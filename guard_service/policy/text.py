"""Sentences and possessives, read one way by every part that reads them (mining documents, the classifier's
views of a prompt, the described-target detector's facts, the output side's generated text)."""

from __future__ import annotations

import re
from collections.abc import Iterator

# Abbreviations and initials whose full stop ends no sentence ("c. 551", "lit. 'Master Kong'", "J. K. Rowling").
_ABBREVIATION = (r"\b(?:[A-Z]|lit|c|ca|cf|vs|viz|approx|fl|b|d|né|née|e\.g|i\.e|Dr|Mr|Mrs|Ms|St|Mt|Prof|Gen|Col|Lt|"
                 r"Sgt|Rev|Vol|pp)\.")
# One sentence and its terminator (Latin or CJK); a full stop not followed by a space ("J.K.", "3.5") or ending an
# abbreviation stays inside it, and a line break ends one (a heading, a list item, a "Question:" line without a
# full stop).
SENTENCE = re.compile(rf"(?:{_ABBREVIATION}|[^.!?。！？\n]|[.!?](?=\S))+[.!?。！？]*")
SENTENCE_MIN_WORDS = 4
_POSSESSIVE = re.compile(r"['’]s$")


def sentence_spans(text: str) -> Iterator[tuple[int, str]]:
    """(offset in `text`, sentence) of every non-blank sentence, stripped."""
    for m in SENTENCE.finditer(text):
        raw = m.group()
        sentence = raw.strip()
        if sentence:
            yield m.start() + len(raw) - len(raw.lstrip()), sentence


def sentences(text: str) -> list[str]:
    """The sentences of `text` long enough to say something."""
    return [s for _, s in sentence_spans(text) if len(s.split()) >= SENTENCE_MIN_WORDS]


def without_possessive(word: str) -> str:
    """"King's" -> "King"."""
    return _POSSESSIVE.sub("", word)
