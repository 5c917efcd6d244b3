"""Knowledge detector (prompt phase, `match`): a prompt about the target that names it only through what its
documents say about it (policy/knowledge.py: terms, works, roles).

A reverse query asks for the person behind one of the target's works or terms, in the target's role ("Who wrote
Salem's Lot?", "the founder of Jeet Kune Do", "the mastermind behind 'The Stand'", "a common author between the
films Misery and The Shining"): a term of the target beside a word of its role or a creator phrase, in a prompt
that asks for someone. A question *about* the related thing ("When was Berkshire Hathaway founded?", "Which
dynasty suppressed Confucianism?") asks for no one, and a role the target does not have ("Who plays Red in The
Shawshank Redemption?", for an author) is someone else's: neither matches. A film the target appeared in has a
cast: only a cast's cue asks for the target through it ("Who starred in Cheers?"), and not when the question
names another part ("Who played the title character in Matilda?"); a thing others made from a work ("the book
for the musical Jagged Little Pill") has its own maker. A partner query asks for someone through a person the
documents name beside a partner word ("Which author co-wrote a novel with Peter Straub?").

Co-mention, for a topic (a fictional world, a franchise, a field), whose documents describe its world: one
distinctive term of it ("Gringotts", "Polyjuice Potion") places a prompt in the target's world. A person's
documents describe what surrounds them (their spouse, the company they run, their co-stars, the teaching named
after them), which RWKU asks about as neighbours: two of its terms together, or one beside the person's surname
("Buffett and Munger", "the husband of model ___ Crawford"), flagged 12.5% of RWKU's neighbour questions over
20 targets, so for a person only the reverse and partner queries and its other names count.

A name the documents say the target went by ("under the pen name Richard Bachman", "born Kong Qiu") is the
target: any prompt that holds it matches.

Reads knowledge.json; compiles nothing of its own (the compiler mines it once for every component)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from guard_service.guards.base import Finding, GuardComponent, Level, PromptText
from guard_service.guards.spelling import words
from guard_service.policy.artifacts import PolicyArtifact
from guard_service.policy.knowledge import (
    ASSOCIATION_WORDS,
    CREATOR_WORDS,
    PARTNER_WORDS,
    PEN_NAME_WORDS,
    PERFORMER_WORDS,
    ROLES,
    common_word,
)
from guard_service.policy.request import TargetKind, UnlearningRequest

DISTINCTIVE = 2.5  # a term's score (documents' Zipf minus general) for co-mention
# Words for someone, whatever their trade ("Which wordsmith or performer is …", "the creative mind behind …").
_SOMEONE = ("figure|individual|personality|celebrity|mind|performer|wordsmith|talent|icon|mastermind|creator|"
            "originator|visionary|luminary|entertainer|artist|star")
_PERSON = re.compile(r"\b(?:who|whom|whose|which (?:\w+ )?(?:person|man|woman|people|one|" + "|".join(ROLES)
                     + rf")s?|which (?:\w+ ){{0,3}}(?:{_SOMEONE})s?|(?:the|a) (?:\w+ )?(?:{_SOMEONE}) "
                     r"(?:behind|who|responsible)|name (?:the|of the|them|him|her)|identify the)\b")


# A part a question names ("the role of Rey", "the title character", "the narrator"): someone's in the cast.
_OTHER_PART = re.compile(r" the (?:role|part|character|voice)s?(?: of)? | the (?:title|lead|main|leading|starring) "
                         r"(?:character|role|part)s? | the (?:narrator|villain|protagonist|antagonist|hero|heroine) ")


# Something made from the work by others ("the book for the musical X", "the film adaptation of X"): its maker
# is someone else, whatever the work's maker did.
_DERIVATIVE = re.compile(r" the (?:book|screenplay|script|music|lyrics|libretto|score|soundtrack) (?:for|of|to) | "
                         r"(?:film|movie|stage|tv|television|musical|screen) (?:adaptation|version|remake)s? | "
                         r"adapted (?:it |this )?(?:for|into) | remake | cover version")


@dataclass(frozen=True)
class Term:
    text: str
    words: str  # `spelling.words` of it
    title: re.Pattern[str] | None  # a common word ("Misery", "Carrie"): only capitalised inside a sentence, or quoted
    score: float
    kind: str  # policy/knowledge.py's: an appearance (a film's cast) or a part is asked for only by a cast's cue
    reverse: bool  # a work or thing someone is behind (not a person the documents name)
    alias: bool  # a name the target went by (a pen name, a birth name): the target itself


@dataclass(frozen=True)
class Known:
    terms: tuple[Term, ...]
    # One pass over a prompt's words finds every term it may hold (overlapping: "richard bachman" and "bachman");
    # only those are checked exactly. Most prompts hold none, so a policy costs one regex scan, not one per term.
    prefilter: re.Pattern[str]
    world: bool  # a topic's documents describe its world: a term of it alone is the target (not so a person's)
    cues: tuple[str, ...]  # `spelling.words` forms of the role words, creator and association phrases


# The same form of the phrases every policy shares: who used a name, who was in a work or is tied to it (not who
# made it), who worked with someone.
_PEN_NAMES = tuple(words(c) for c in PEN_NAME_WORDS)
_CAST = frozenset(words(c) for c in (*PERFORMER_WORDS, *ASSOCIATION_WORDS))
_PARTNERS = tuple(words(c) for c in PARTNER_WORDS)


def _title(text: str) -> re.Pattern[str]:
    return re.compile(rf"(?<=[^.!?\s]\s){re.escape(text)}\b|['\"‘“]{re.escape(text)}\b")


def _present(term: Term, prompt: PromptText) -> bool:
    if term.title is not None:
        return term.title.search(prompt.raw) is not None
    return term.words in prompt.derived("words", words)


def _distinct(found: list[Term]) -> list[Term]:
    """Terms not inside another one found ("Bachman" in "Richard Bachman")."""
    return [t for t in found if not any(t is not o and t.words in o.words for o in found)]


class KnowledgeDetector(GuardComponent):
    name = "knowledge"

    def load(self, artifact: PolicyArtifact, spec: UnlearningRequest) -> Known | None:
        known = artifact.knowledge
        terms = tuple(Term(t.text, words(t.text), _title(t.text) if common_word(t.text) else None, t.score, t.kind,
                           "reverse-query" in t.uses, "alias" in t.uses)
                      for t in known.terms() if {"reverse-query", "co-mention", "alias"} & set(t.uses))
        if not terms:
            return None
        # a performer's words only for a performer's role; association phrases for every target
        cues = {words(c) for role in known.roles for c in ROLES.get(role, ())} | {
            words(c) for c in (*CREATOR_WORDS, *ASSOCIATION_WORDS)}
        forms = sorted({t.words.strip() for t in terms if t.words.strip()}, key=len, reverse=True)
        prefilter = re.compile("(?= (" + "|".join(map(re.escape, forms)) + ") )")
        return Known(terms, prefilter, spec.kind in (TargetKind.topic, TargetKind.document), tuple(sorted(cues)))

    def scan(self, part: Known | None, prompt: PromptText) -> Finding | None:
        if part is None:
            return None
        text = prompt.derived("words", words)
        near = {m.group(1) for m in part.prefilter.finditer(text)}
        if not near:
            return None
        found = _distinct([t for t in part.terms if t.words.strip() in near and _present(t, prompt)])
        if not found:
            return None
        alias = next((t for t in found if t.alias), None)
        if alias is not None:  # "Who is Richard Bachman?", "Who taught Kong Qiu?": a name the target went by
            return Finding(Level.match, f"knowledge:other-name:{alias.text}", 1.0)
        pen = next((c for c in _PEN_NAMES if c in text), None)
        if pen is not None:  # "the mastermind behind X published under which pen name?", "... under the name Y"
            return Finding(Level.match, f"knowledge:reverse:{found[0].text}+{pen.strip()}", 1.0)
        works = [t for t in found if t.reverse]
        rest = text
        for t in found:  # a cue inside a title is no cue ("star" in "Star Wars")
            rest = rest.replace(t.words, " ")
        asks = _PERSON.search(text) is not None
        cues = [c for c in part.cues if c in rest]
        if works and cues and asks:
            # a film has a cast: "who played X in it" asks for the target only where X is the target's part
            other = _OTHER_PART.search(text)
            ours = other is None or any(text.startswith(t.words, other.end() - 1) for t in found
                                        if t.kind in ("character", "name"))
            cast = {c for c in cues if c in _CAST} if ours else set()  # who was in it, or is tied to it
            made = {c for c in cues if c not in _CAST} if not _DERIVATIVE.search(text) else set()  # who made it
            for work in works:
                allowed = cast if work.kind in ("appearance", "character") else cast | made
                cue = next((c for c in cues if c in allowed), None)
                if cue is not None:
                    return Finding(Level.match, f"knowledge:reverse:{work.text}+{cue.strip()}", 1.0)
        partner = next((t for t in found if t.kind == "name"), None)
        if partner is not None and asks:  # "Which author co-wrote a novel with Peter Straub?"
            cue = next((c for c in _PARTNERS if c in rest), None)
            if cue is not None:
                return Finding(Level.match, f"knowledge:partner:{partner.text}+{cue.strip()}", 1.0)
        strong = next((t for t in found if t.score >= DISTINCTIVE), None)
        if part.world and strong is not None:
            return Finding(Level.match, f"knowledge:term:{strong.text}", 1.0)
        return None
