"""Name detector (prompt phase, `match`): the target or one of its names in the prompt, written exactly, spelled
out ("H a r r y"), with character swaps ("H4rry"), with a typo, cut short / in pieces ("J.K. R", "Harry Pot",
"Hermi"), with typos in every word of a longer name ("Xin Le Wiliams": `spelling.misspelled`), or in another
script ("Гарри Поттер", "哈利·波特": `transliteration`). Reads the names the semantic component wrote into
classifier.json and the whole names and their sound keys in forbidden.json; compiles nothing of its own."""

from __future__ import annotations

from dataclasses import dataclass

from rapidfuzz import fuzz

from guard_service.guards.base import Finding, GuardComponent, Level, PromptText
from guard_service.guards.spelling import (
    NameIndex,
    TypoIndex,
    misspelled,
    name_index,
    name_leaks,
    squash,
    typo_index,
    units_of,
    words,
)
from guard_service.guards.transliteration import SoundName, sound_index, transliterated
from guard_service.guards.transliteration import units as sound_units  # derived once per prompt, for all policies
from guard_service.policy.artifacts import PolicyArtifact
from guard_service.policy.request import UnlearningRequest
from guard_service.policy.sound import cjk

_SWAPS = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i",
                        "|": "l"})
FUZZY_MIN_LEN = 6
FUZZY_MIN_SCORE = 88


@dataclass(frozen=True)
class Alias:
    text: str
    words: str  # `spelling.words` of it
    squashed: str  # `spelling.squash` of it
    casefold: str
    cjk: bool = False  # written in a script without spaces: found anywhere in the text ("孔子是谁")


@dataclass(frozen=True)
class Names:
    aliases: tuple[Alias, ...]  # normal forms worked out once per policy version, not once per prompt
    whole: NameIndex  # whole names only: one word of a name alone is a namesake's as often as the target's
    typos: TypoIndex  # the same, for typos
    sounds: tuple[SoundName, ...] = ()  # the same, by sound in other scripts


def _swapped(raw: str) -> str:
    return squash(raw.casefold().translate(_SWAPS))


def lexical_reason(prompt: PromptText, aliases: tuple[Alias, ...]) -> str | None:
    text_words = prompt.derived("words", words)
    for alias in aliases:
        if alias.words.strip() and alias.words in text_words:
            return f"alias:{alias.text}"
        if alias.cjk and alias.casefold in prompt.derived("casefold", str.casefold):  # no spaces to bound it
            return f"alias:{alias.text}"
    squashed, swapped = prompt.derived("squashed", squash), prompt.derived("swapped", _swapped)
    for alias in aliases:
        if len(alias.squashed) >= 4 and (alias.squashed in squashed or alias.squashed in swapped):
            return f"alias-obfuscated:{alias.text}"
    raw_cf = prompt.derived("casefold", str.casefold)
    for alias in aliases:
        # partial_ratio slides the shorter string over the longer: a text shorter than the alias ("a") would be
        # compared with a piece of the alias and match it.
        if (len(alias.text) >= FUZZY_MIN_LEN and len(raw_cf) >= len(alias.text)
                and fuzz.partial_ratio(alias.casefold, raw_cf) >= FUZZY_MIN_SCORE):
            return f"alias-fuzzy:{alias.text}"
    return None


class NameDetector(GuardComponent):
    name = "names"

    def load(self, artifact: PolicyArtifact, spec: UnlearningRequest) -> Names:
        whole = name_index(artifact.forbidden.items, whole_only=True)
        aliases = tuple(Alias(a, words(a), squash(a), a.casefold(), cjk(a)) for a in artifact.classifier.aliases)
        return Names(aliases, whole, typo_index(whole), sound_index(artifact.forbidden.crosslingual))

    def scan(self, part: Names, prompt: PromptText) -> Finding | None:
        reason = lexical_reason(prompt, part.aliases)
        if reason is None:
            units = prompt.derived("units", units_of)
            if spans := name_leaks(prompt.raw, part.whole, 0, True, units):
                reason = f"alias-partial:{prompt.raw[spans[0][0]:spans[0][1]]}"
            elif spans := misspelled(prompt.raw, part.typos, 0, True, units):
                reason = f"alias-misspelled:{prompt.raw[spans[0][0]:spans[0][1]]}"
            elif part.sounds and not prompt.raw.isascii() and (spans := transliterated(
                    prompt.raw, part.sounds, 0, True, prompt.derived("sound_units", sound_units))):
                reason = f"alias-transliterated:{prompt.raw[spans[0][0]:spans[0][1]]}"
        return Finding(Level.match, reason) if reason else None
