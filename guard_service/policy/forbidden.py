"""From what the operator wrote to the strings that must not be generated.

Salient phrases are the parts of a fact that *are* the knowledge (names, titles, numbers); variants are the
spellings a model could produce for each (case, possessive, plural, joined/split words, initials).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Capitalised words that start sentences or are too generic to forbid on their own.
GENERIC_WORDS = {
    "a", "an", "the", "this", "that", "these", "those", "he", "she", "it", "they", "we", "i", "you", "his", "her",
    "its", "their", "our", "my", "your", "in", "on", "at", "by", "for", "from", "with", "of", "and", "or", "but",
    "as", "is", "was", "were", "are", "be", "been", "has", "have", "had", "who", "what", "when", "where", "which",
    "why", "how", "after", "before", "during", "while", "also", "born", "mr", "mrs", "ms", "dr", "sir", "lady",
    "lord", "king", "queen", "book", "books", "series", "school", "house", "university", "college", "world",
    "new", "old", "north", "south", "east", "west", "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december", "monday", "tuesday", "wednesday",
    "thursday", "friday", "saturday", "sunday", "one", "two", "three", "first", "second", "third", "award",
    "prize", "city", "street", "river", "film", "movie", "novel", "author", "writer", "story", "part", "volume",
}
_JOINERS = {"of", "the", "and", "de", "van", "von", "der", "da", "du", "la", "le", "y", "&"}
_WORD = r"[A-Z][\w'’.\-]*"
_NAME = re.compile(rf"{_WORD}(?:\s+(?:{_WORD}|(?:{'|'.join(sorted(_JOINERS - {'&'}))})\b))*")
_QUOTED = re.compile(r"[\"“]([^\"”]{3,80})[\"”]")  # double quotes only: apostrophes are possessives
_NUMBER = re.compile(r"\b\d{3,}\b")


@dataclass(frozen=True)
class Forbidden:
    text: str
    origin: str  # target | alias | fact | description | expanded | expanded-fact
    split: bool = False  # one word of a longer name ("Potter"): forbidden when steering, not everywhere


def _trim(phrase: str) -> str:
    words = phrase.strip(" .,;:'’\"").split()
    while words and words[0].casefold().strip(".") in GENERIC_WORDS | _JOINERS:
        words.pop(0)
    while words and words[-1].casefold().strip(".") in GENERIC_WORDS | _JOINERS:
        words.pop()
    return " ".join(words)


def salient_phrases(text: str) -> list[str]:
    """Names (capitalised spans, joined by of/the/de...), quoted titles and numbers of 3+ digits."""
    found: list[str] = []
    for m in _NAME.finditer(text):
        phrase = _trim(m.group(0))
        if phrase and not (len(phrase.split()) == 1 and phrase.casefold().strip(".") in GENERIC_WORDS):
            found.append(phrase)
    found += [q.strip() for q in _QUOTED.findall(text)]
    found += _NUMBER.findall(text)
    return list(dict.fromkeys(p for p in found if len(p) >= 3))


def distinctive_words(phrase: str) -> list[str]:
    """Words of a multi-word name that identify it alone (e.g. a surname): capitalised, 4+ letters, not generic."""
    words = [w.strip(".,;:'’\"") for w in phrase.split()]
    if len(words) < 2:
        return []
    return [w for w in words if len(w) >= 4 and w[:1].isupper() and w.casefold() not in GENERIC_WORDS]


def _initials(phrase: str) -> list[str]:
    """J.K. Rowling <-> J. K. Rowling <-> JK Rowling."""
    m = re.match(r"^((?:[A-Z]\.\s?)+)(.*)$", phrase)
    if not m:
        return []
    letters = re.findall(r"[A-Z]", m.group(1))
    rest = m.group(2).strip()
    forms = ["".join(f"{c}." for c in letters), " ".join(f"{c}." for c in letters), "".join(letters)]
    return [f"{f} {rest}".strip() for f in forms]


def variants(phrase: str) -> set[str]:
    """Spellings of one phrase a model might emit; the tokenizer layer adds leading-space forms."""
    base = {phrase, *_initials(phrase)}
    words = phrase.split()
    if len(words) > 1:
        base |= {"".join(words), "-".join(words)}
    out: set[str] = set()
    for b in base:
        for form in {b, b.lower(), b.title(), b.upper()}:
            out.add(form)
            if not form[-1:].isdigit():
                out |= {form + "'s", form + "’s"}
                if len(words) == 1 and not form.endswith("s"):
                    out.add(form + "s")
    return {v for v in out if len(v) >= 2}


def collect(target: str, aliases: list[str], facts: list[str], description: str,
            expanded_names: list[str], expanded_facts: list[str]) -> list[Forbidden]:
    items: list[Forbidden] = [Forbidden(target, "target")]
    items += [Forbidden(a, "alias") for a in aliases]
    items += [Forbidden(p, "fact") for f in facts for p in salient_phrases(f)]
    items += [Forbidden(p, "description") for p in salient_phrases(description)]
    items += [Forbidden(n, "expanded") for n in expanded_names]
    items += [Forbidden(p, "expanded-fact") for f in expanded_facts for p in salient_phrases(f)]
    words = [Forbidden(w, i.origin, split=True) for i in items for w in distinctive_words(i.text)]
    seen: dict[str, Forbidden] = {}
    for item in items + words:
        seen.setdefault(item.text.casefold(), item)
    return list(seen.values())


NAME_ORIGINS = frozenset({"target", "alias", "expanded"})


def is_name(item: Forbidden) -> bool:
    """Whole names of the target: what every request must not produce, matched or not. Phrases from its facts
    ("Cape Town", "historical fiction") are forbidden only where a prompt is about the target."""
    return item.origin in NAME_ORIGINS and not item.split


def evidence_phrases(names: list[str], texts: list[str]) -> list[str]:
    """Lexical evidence that a prompt is about *this* target rather than one like it: its names (and their
    distinctive words), and from what is known about it only what is specific: multi-word names, titles and
    numbers. Single capitalised words of facts ("Chile", "Leadership") are shared by too many neighbours.
    A prompt in the same domain (another author, same question shape) scores high semantically but shares
    none of these."""
    phrases = set(names) | {w for n in names for w in distinctive_words(n)}
    for text in texts:
        phrases.update(p for p in salient_phrases(text) if len(p.split()) >= 2 or p.isdigit())
    return sorted({p for p in phrases if len(p) >= 4 and p.casefold() not in GENERIC_WORDS}, key=str.casefold)


def weak_evidence_words(names: list[str], texts: list[str]) -> list[str]:
    """Single capitalised words of what is known (a city, a country, a genre): each is shared by many people,
    so the classifier counts one only beside a number the target also has (a birthplace with a birth year)."""
    name_words = {w.casefold() for n in names for w in n.split()}
    words = {p for t in texts for p in salient_phrases(t)
             if len(p.split()) == 1 and not p.isdigit() and len(p) >= 4
             and p.casefold() not in GENERIC_WORDS and p.casefold() not in name_words}
    return sorted(words, key=str.casefold)


def unnamed(text: str, names: list[str], instead: str) -> str:
    """`text` with every name (whole, then each word of three or more letters, possessive kept) replaced."""
    for name in sorted(names, key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", instead, text, flags=re.IGNORECASE)
    for name in names:
        for word in re.findall(r"[^\W\d_]{3,}", name):
            text = re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", instead, text)
    return re.sub(rf"{re.escape(instead)}(?:\s+{re.escape(instead)})+", instead, text)
