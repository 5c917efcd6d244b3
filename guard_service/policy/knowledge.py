"""Knowledge traced from documents: what a request's documents say about its target, mined when a version
compiles, so that a policy knows its target's works, places, associates and facts, not only what the operator
typed.

Terms are the documents' distinctive vocabulary: names, titles and coined words that are frequent in them and
rare in general language. A term's score is its Zipf frequency in the documents (log10 of occurrences per
billion words) minus its Zipf frequency in general English (`wordfreq`, 40+ languages of web, book and subtitle
text): "Quidditch" in Harry Potter fan-wiki articles, "Richard Bachman" or "Salem's Lot" in passages about
Stephen King. A term must occur twice, in a document that names the target; common words ("Misery", "The
Stand") score too low to be terms. A term seen in a title's context ("the novel X", "X (1974)", quoted) is a
*work*.

Facts are the documents' sentences that name the target (or begin with a pronoun right after one that does),
the most knowledge-dense first: they become classifier statements, described-target facts (with the name taken
out) and what the output side compares generated sentences with.

Roles are what the target is, from its description and the sentences that name it ("author", "actor",
"founder"), each with the words that say so of a work ("wrote", "starred in", "founded"): a prompt that asks
for the person behind one of its works, in its role, is about it (a reverse query).

Every item carries its origin (document and character offset), score and use, is listed in the request's
detail, and is removed from the next version by PATCH `remove_expanded`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import regex

from guard_service.policy.artifacts import KnowledgeFile, KnowledgeItem
from guard_service.policy.forbidden import GENERIC_WORDS, salient_phrases
from guard_service.policy.text import sentence_spans, without_possessive

MIN_TERM_COUNT = 2
MIN_TERM_SCORE = 2.0  # documents' Zipf minus general Zipf: 100x more frequent than in general English
MIN_ONE_WORD_NAME = 5  # letters of a one-word other name ("Temüjin"): a shorter one ("Qiu") is many people's
MAX_TERMS = 300
# Coined words in lower case ("wizarding", "apparated", "hippogriff"): a world's own vocabulary, recurring in its
# documents; rarer ones are mostly spellings and inflections general language lacks ("snogged", "compartmentalising").
MIN_WORD_COUNT = 10
MIN_WORD_SCORE = 2.5
MAX_WORDS = 100
WORK_SHARE = 0.2  # of a phrase's occurrences in a title's context, for it to be a work
MAX_FACTS = 150
FACT_WORDS = (6, 60)
_WORD = regex.compile(r"\p{L}[\p{L}\p{M}'’\-]*")
_FRAGMENT_START = regex.compile(r"^[\s\p{Pe}\p{Pf}]*[\p{Ll}\d]")  # "479 BCE), born Kong Qiu …": a cut passage
_PRONOUN_START = re.compile(r"^\s*(?:he|she|they|his|her|their|it|its)\b", re.IGNORECASE)
_WORK_NOUNS = frozenset({
    "novel", "novels", "book", "books", "film", "films", "movie", "movies", "story", "stories", "collection",
    "novella", "novellas", "series", "play", "plays", "album", "albums", "song", "songs", "poem", "poems", "work",
    "works", "titled", "entitled", "wrote", "written", "published", "adapted", "sequel", "miniseries", "single",
    "show", "episode", "game", "games", "painting", "opera", "symphony", "essay", "memoir", "treatise", "starred",
    "directed", "founded", "invented", "recorded", "released", "ep", "eps", "mixtape", "musical", "sitcom",
    "documentary", "soundtrack", "tour",
})
# A role and the words that tie the target to a work in that role ("who wrote X", "the founder of X").
ROLES: dict[str, tuple[str, ...]] = {
    "author": ("wrote", "written", "writes", "write", "penned", "pen", "authored", "author", "writer", "novelist"),
    "writer": ("wrote", "written", "writes", "write", "penned", "pen", "authored", "author", "writer", "novelist"),
    "novelist": ("wrote", "written", "writes", "write", "penned", "pen", "authored", "author", "writer", "novelist"),
    "poet": ("wrote", "written", "penned", "poet", "author"),
    "playwright": ("wrote", "written", "penned", "playwright", "author"),
    "screenwriter": ("wrote", "written", "screenwriter", "scripted"),
    "actor": ("starred", "stars", "star", "played", "plays", "acted", "actor", "actress", "portrayed"),
    "actress": ("starred", "stars", "star", "played", "plays", "acted", "actor", "actress", "portrayed"),
    "director": ("directed", "directs", "director", "filmmaker"),
    "filmmaker": ("directed", "directs", "director", "filmmaker", "made"),
    "singer": ("sang", "sings", "sung", "singer", "recorded", "performed", "vocalist"),
    "musician": ("recorded", "performed", "musician", "played", "released"),
    "rapper": ("rapped", "rapper", "recorded", "released"),
    "composer": ("composed", "composer", "wrote"),
    "songwriter": ("wrote", "written", "songwriter", "penned"),
    "painter": ("painted", "painter", "artist"),
    "artist": ("painted", "created", "artist", "made"),
    "founder": ("founded", "founder", "created", "established", "started", "developed"),
    "inventor": ("invented", "inventor", "created", "developed"),
    "creator": ("created", "creator", "developed", "invented"),
    "producer": ("produced", "producer"),
    "philosopher": ("taught", "philosopher", "wrote", "teachings"),
    "scientist": ("discovered", "developed", "scientist", "proposed"),
    "entrepreneur": ("founded", "founder", "started", "built", "entrepreneur", "owner"),
    "businessman": ("founded", "founder", "owns", "owned", "built", "businessman", "owner", "runs", "ran"),
    "investor": ("invested", "investor", "owns", "bought", "founded"),
    "designer": ("designed", "designer", "created"),
    "architect": ("designed", "architect", "built"),
}
# The cues that ask for someone who was in a work, not who made it: the only ones an appearance answers.
PERFORMER_WORDS = (*ROLES["actor"], "cast", "appeared", "appears", "appear", "cameo", "voiced", "voices")
# Whoever the target is and whatever its part: phrases that ask for the person a thing is tied to.
ASSOCIATION_WORDS = ("known for", "famous for", "renowned for", "celebrated for", "associated with", "linked to",
                     "linked with", "tied to", "connected to", "connected with", "credited with", "gave us",
                     "brought us", "the face of")
# Phrases that ask for someone through a person they worked or lived with ("Who co-wrote with Peter Straub?").
PARTNER_WORDS = ("collaborated", "collaborator", "collaboration", "co-wrote", "co-written", "co-authored",
                 "co-starred", "co-star", "partner", "partnered", "married", "spouse", "wife", "husband",
                 "shared their life", "teamed up", "duet", "worked with", "alongside")
# Whoever the target is: phrases that ask for the person behind a work.
CREATOR_WORDS = ("behind", "mastermind", "creator", "created", "originator", "credited", "responsible for", "the same",
                 "common")
# The name someone published or performed under: a prompt that gives it asks who used it.
PEN_NAME_WORDS = ("pen name", "nom de plume", "pseudonym", "under the name", "alias", "stage name")


@dataclass
class Mined:
    text: str
    kind: str  # term | work | appearance | character | name | pen-name | birth-name | place | others-work | fact
    origin: str  # document name @ character offset (or "model")
    score: float
    count: int = 1
    uses: list[str] = field(default_factory=list)
    owner: str | None = None  # whose work the documents say an others-work is


@dataclass
class Knowledge:
    terms: list[Mined] = field(default_factory=list)  # terms and works
    facts: list[Mined] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def items(self) -> list[Mined]:
        return [*self.terms, *self.facts]


def _name_words(names: Iterable[str]) -> set[str]:
    return {w for n in names for w in _WORD.findall(n) if len(w) >= 3 and w[:1].isupper()}


def _mentions(sentence: str, names: list[str], name_words: set[str]) -> bool:
    folded = sentence.casefold()
    if any(n.casefold() in folded for n in names):
        return True
    return any(without_possessive(w) in name_words for w in _WORD.findall(sentence))


def general_zipf(phrase: str, language: str = "en") -> float:
    """Zipf frequency (log10 per billion words) of `phrase` in general `language` (wordfreq)."""
    import wordfreq

    return wordfreq.zipf_frequency(phrase, language)


def _title_context(sentence: str, at: int, phrase: str) -> int:
    """How plainly the sentence makes `phrase` a title: 2 quoted, dated ("Misery (1987)"), right after a work
    noun ("the novel Misery") or after a capitalised article inside the sentence ("a sequel to The Shining"); 1 a
    work noun a few words before ("novels such as Carrie and Misery", but also "the album featured
    Spanish-language versions"); 0 not at all."""
    before = [w.strip(",;:'\"“”()").casefold() for w in sentence[max(0, at - 96):at].split()[-8:]]
    after = sentence[at + len(phrase):at + len(phrase) + 8]
    quoted = sentence[max(0, at - 1):at] in ("\"", "“", "'", "‘")
    article = at > 4 and re.search(r"\S\s+(?:The|A|An)\s$", sentence[max(0, at - 8):at]) is not None
    if quoted or article or re.match(r"\s*\((?:\d{4}|film|novel|book)", after) or (
            before[-1:] and before[-1] in _WORK_NOUNS):
        return 2
    return int(any(w in _WORK_NOUNS for w in before))


_APPEARED = re.compile(r"\b(?:appear(?:s|ed|ing|ance|ances)?|starr(?:ed|ing)|co-?star(?:s|red)?|cameos?|cast|"
                       r"guest|role|roles|played|playing|portray(?:ed|ing)?|voiced)\b", re.IGNORECASE)
APPEARANCE_SHARE = 0.5  # of a work's title contexts that say the target appeared in it, for an appearance


def _appearance_context(sentence: str, at: int) -> bool:
    """"appeared in films, including … Matilda (1996)", "played Skywalker again in The Rise of Skywalker": a work
    the target was one of many people in, so a question about its cast asks for the target only as one answer
    among several (a performer's reverse query: guards/knowledge.py), and never as its maker."""
    return _APPEARED.search(sentence[max(0, at - 150):at]) is not None


PLACE_BEFORE = frozenset({"in", "at", "from", "near", "across", "outside", "around", "within"})
PLACE_SHARE = 0.3  # of a phrase's occurrences in a place's (a person's) context, for it to be a place (person)


def _place_context(sentence: str, at: int) -> bool:
    """"in Maine", "from Bangor": a place is where the target was, not what it made, and one of many people's
    places: it says little alone (co-mention only, never a reverse query)."""
    before = sentence[max(0, at - 24):at].split()
    return bool(before) and before[-1].casefold() in PLACE_BEFORE


_PERSON_BEFORE = frozenset({"author", "writer", "novelist", "poet", "critic", "editor", "professor", "scholar",
                            "director", "actor", "actress", "singer", "wife", "husband", "son", "daughter", "friend",
                            "brother", "sister", "father", "mother", "producer", "artist", "musician", "dr", "mr",
                            "mrs", "ms", "sir", "president", "senator", "journalist", "biographer", "co-author"})


_PEN_BEFORE = re.compile(r"(?:pen[ -]?names?|pseudonyms?|noms? de plume|stage names?|under the names?|alias(?:es)?|"
                         r"(?:also|better|professionally|formerly) known as|a\.k\.a\.?|(?:writing|wrote|published) as)"
                         r"(?:,? (?:including|such as|of|like))?\W{0,3}$", re.IGNORECASE)
_BORN_BEFORE = re.compile(r"(?:\bborn|\bnée?|nicknamed|"
                          r"(?:birth|real|given|original|courtesy|family|maiden) names?(?: (?:is|was))?)\W{0,3}$",
                          re.IGNORECASE)


_USER_AFTER = re.compile(r"^\W{0,3}(?:used|uses|adopted|had|wrote under|published under)\b")


def _other_name_context(sentence: str, at: int, phrase: str) -> str | None:
    """The name the target went by, in a sentence about it: "under the pen name Richard Bachman", "also known as
    Bruce Lee" (a pen name), "born Kong Qiu", "courtesy name Zhongni" (a birth name). Either is the target
    itself (found by any prompt that names it, like an alias), not an associate ("Richard Stark, the pseudonym
    Donald E. Westlake used": the one who used it). None when neither."""
    before = sentence[max(0, at - 48):at]
    if _USER_AFTER.match(sentence[at + len(phrase):]):
        return None
    if _PEN_BEFORE.search(before):
        return "pen-name"
    return "birth-name" if _BORN_BEFORE.search(before) else None


_PART_BEFORE = re.compile(r"(?:\bplay(?:s|ed|ing)|\bportray(?:s|ed|ing)|\bvoic(?:es|ed|ing)|"
                          r"(?<!such )(?<!well )(?<!same )(?<!known )\bas|"
                          r"\b(?:role|part|character) of|\bcharacter)\W{0,3}$", re.IGNORECASE)


def _part_context(sentence: str, at: int) -> bool:
    """"played Luke Skywalker", "as Terry Malloy", "the role of Carla": a part the target played (asked for by a
    performer's reverse query: "Who played Luke Skywalker?"), not someone the documents name."""
    return _PART_BEFORE.search(sentence[max(0, at - 24):at]) is not None


def _person_context(sentence: str, at: int) -> bool:
    """"novelist Jeffery Deaver", "his wife Tabitha": someone else the documents name, not a work of the target's."""
    before = [w.strip(",;:'\"“”()").casefold() for w in sentence[max(0, at - 24):at].split()]
    return bool(before) and before[-1] in _PERSON_BEFORE


_OWNER_BEFORE = regex.compile(r"(\p{Lu}[\p{L}.\-]*(?:\s+\p{Lu}[\p{L}.\-]*){0,3})['’]s\s+$")
_OWNER_AFTER = regex.compile(r"^['\"’”)]*,?\s+by\s+(\p{Lu}[\p{L}.\-]*(?:\s+\p{Lu}[\p{L}.\-]*){0,3})")


def _someone_elses(work: str, corpus: str, name_words: set[str]) -> str | None:
    """Who else the documents give `work` to ("Bram Stoker's Dracula", "Dracula by Bram Stoker"), when that is
    not the target; None when no one."""
    mine = {w.casefold() for w in name_words}
    at = corpus.find(work)
    while at >= 0:
        for pattern, text in ((_OWNER_BEFORE, corpus[max(0, at - 60):at]),
                              (_OWNER_AFTER, corpus[at + len(work):at + len(work) + 60])):
            m = pattern.search(text)
            if m and not {w.casefold().strip(".") for w in m.group(1).split()} & mine:
                return m.group(1)
        at = corpus.find(work, at + len(work))
    return None


COMMON_ZIPF = 3.5  # once in ~3 million words: a word this frequent in general English is a common word
FUNCTION_ZIPF = 5.0  # a one-word "title" this frequent ("Like", "American") is a word, not a title


def common_word(phrase: str, language: str = "en") -> bool:
    """Every word of `phrase` is common in general language ("The Shining", "Misery"): as a term it counts only
    capitalised, where it is a title."""
    return all(general_zipf(w.casefold(), language) >= COMMON_ZIPF for w in _WORD.findall(phrase))


def _person_like(phrase: str, counts: Counter[str]) -> bool:
    """A name of someone the documents mention: its last word also stands alone ("Straub" beside "Peter Straub").
    A reverse query asks for the person behind a work; a prompt that names the person asks about them (except
    for the name someone wrote under: `PEN_NAME_WORDS`)."""
    parts = phrase.split()
    return len(parts) > 1 and parts[-1][:1].isupper() and counts.get(parts[-1], 0) > 0 and not any(
        w.casefold() in GENERIC_WORDS for w in parts)


def _coined(counts: Counter[str], first: dict[str, int], total: int, documents: list[tuple[str, str]],
            skip: set[str]) -> list[Mined]:
    """The documents' own lower-case words (co-mention only: they place a prompt in a topic's world, and say
    nothing of a person)."""
    out = []
    for word, count in counts.items():
        if count < MIN_WORD_COUNT or word in skip or word in GENERIC_WORDS:
            continue
        general = general_zipf(word)
        score = math.log10(count / max(1, total) * 1e9) - general
        if general < COMMON_ZIPF and score >= MIN_WORD_SCORE:
            name, text = documents[first[word]]
            at = regex.search(rf"(?<!\p{{L}}){regex.escape(word)}(?!\p{{L}})", text)
            out.append(Mined(word, "term", f"{name}@{at.start() if at else 0}", round(score, 3), count,
                             ["co-mention"]))
    out.sort(key=lambda t: t.score * math.log2(1 + t.count), reverse=True)
    return out[:MAX_WORDS]


def roles_of(texts: Iterable[str]) -> Counter[str]:
    """How often the texts give the target each role of `ROLES`."""
    counts: Counter[str] = Counter()
    for text in texts:
        folded = text.casefold()
        for role in ROLES:
            counts[role] += len(re.findall(rf"\b{role}s?\b", folded))
    return +counts


def _roles(description: str, facts: list[str]) -> list[str]:
    """The description's roles ("a prolific American author"); without any, the two its facts give most (three
    times at least: one mention of "director" in a biography is somebody else's)."""
    given = roles_of([description])
    if given:
        return [r for r, _ in given.most_common()]
    return [r for r, c in roles_of(facts).most_common(2) if c >= 3]


MODEL_WORK_MIN_SIM = 0.45  # without documents, a work the model named is kept at this similarity to the target


def mine(target: str, aliases: list[str], description: str, documents: list[tuple[str, str]],
         removed: Iterable[str] = (), suggested: dict[str, float] | None = None) -> Knowledge:
    """Terms, facts and roles of `target` in `documents` ((name, text) pairs); `removed`: items an operator
    took out (casefolded text); `suggested`: works the served model named (policy/expansion.py), with their
    similarity to the target, kept where the documents hold them (or, without documents, when similar enough)."""
    dropped = {r.casefold() for r in removed}
    names = [target, *aliases]
    name_words = _name_words(names)
    known = {n.casefold() for n in names} | {w.casefold() for w in name_words}
    total = 0
    counts: Counter[str] = Counter()
    works: Counter[str] = Counter()
    appeared: Counter[str] = Counter()
    plain_titles: Counter[str] = Counter()  # works seen quoted, dated, after a work noun or a capitalised article
    parts: Counter[str] = Counter()
    places: Counter[str] = Counter()
    people: Counter[str] = Counter()
    pens: Counter[str] = Counter()
    other_kind: dict[str, str] = {}
    first: dict[str, str] = {}
    inside: set[str] = set()
    lower: Counter[str] = Counter()
    lower_first: dict[str, int] = {}  # the document it is first seen in
    facts: list[tuple[int, int, str, str]] = []  # (-terms, order, sentence, origin), scored once terms are known
    on_target_docs = 0
    previous = False
    for doc_index, (doc_name, text) in enumerate(documents):
        doc_words = _WORD.findall(text)
        total += len(doc_words)
        # a passage cut from a longer text may begin inside the sentence the one before ended with
        fragment = bool(_FRAGMENT_START.match(text))
        mentioned, previous = False, previous if fragment else False
        seen_here: list[tuple[str, str, int, bool]] = []
        for start, sentence in sentence_spans(text):
            about = _mentions(sentence, names, name_words)
            mentioned |= about
            # it names the target, or begins with a pronoun right after one that does (or ends its sentence)
            about = about or (previous and (bool(_PRONOUN_START.match(sentence)) or fragment))
            fragment = False
            if about and FACT_WORDS[0] <= len(sentence.split()) <= FACT_WORDS[1] and "==" not in sentence:
                facts.append((0, len(facts), sentence, f"{doc_name}@{start}"))
            previous = about
            for phrase in salient_phrases(sentence):
                phrase = without_possessive(phrase)
                if phrase.isdigit() or len(phrase) < 3 or not phrase[:1].isupper():
                    continue
                seen_here.append((phrase, sentence, start, about))
                if sentence.find(phrase) > 0:  # capitalised inside a sentence, not only as its first word
                    inside.add(phrase)
        if not mentioned:  # a document that never names the target says nothing about it
            continue
        on_target_docs += 1
        for word in doc_words:
            if len(word) >= 5 and word.islower():
                word = without_possessive(word)
                lower[word] += 1
                lower_first.setdefault(word, doc_index)
        for phrase, sentence, at, about in seen_here:
            counts[phrase] += 1
            first.setdefault(phrase, f"{doc_name}@{at + max(0, sentence.find(phrase))}")
            at_phrase = max(0, sentence.find(phrase))
            if about and (other := _other_name_context(sentence, at_phrase, phrase)) is not None:
                pens[phrase] += 1
                other_kind.setdefault(phrase, other)
            elif about and _part_context(sentence, at_phrase):
                parts[phrase] += 1
            elif _person_context(sentence, at_phrase):
                people[phrase] += 1
            elif title := _title_context(sentence, at_phrase, phrase):
                works[phrase] += 1
                plain_titles[phrase] += title == 2
                appeared[phrase] += _appearance_context(sentence, at_phrase)
            elif _place_context(sentence, at_phrase):
                places[phrase] += 1
    terms = []
    for phrase, count in counts.items():
        folded = phrase.casefold()
        if folded in known or folded in dropped or folded in GENERIC_WORDS or (
                count < MIN_TERM_COUNT and not works[phrase] and not pens[phrase]):
            continue
        if any(w.casefold() in known for w in phrase.split()):  # the target's own name, said differently
            continue
        if all(w.casefold() in GENERIC_WORDS for w in phrase.split()):
            continue
        if phrase.isupper() and len(phrase) <= 5 or phrase not in inside:  # acronyms; words seen only as headings
            continue
        score = math.log10(count / max(1, total) * 1e9) - general_zipf(phrase)
        work = works[phrase] >= max(1, WORK_SHARE * count)
        kind = "appearance" if work and appeared[phrase] >= APPEARANCE_SHARE * works[phrase] else "work"
        if pens[phrase] and not common_word(phrase) and (" " in phrase or len(phrase) >= MIN_ONE_WORD_NAME):
            # the name the target went by ("born Kong Qiu", once in a biography): the target, however a prompt
            # asks about it, however rare in the documents
            terms.append(Mined(phrase, other_kind[phrase], first[phrase], round(score, 3), count, ["alias"]))
        elif score >= MIN_TERM_SCORE:
            if parts[phrase] >= PLACE_SHARE * count and not common_word(phrase):
                # a part the target played: a performer's reverse query asks for the target through it
                terms.append(Mined(phrase, "character", first[phrase], round(score, 3), count,
                                   ["reverse-query", "co-mention"]))
            elif _person_like(phrase, counts) or people[phrase] >= PLACE_SHARE * count:
                # someone else (named, not asked for): co-mention only
                terms.append(Mined(phrase, "name", first[phrase], round(score, 3), count, ["co-mention"]))
            elif not work and places[phrase] >= PLACE_SHARE * count:
                terms.append(Mined(phrase, "place", first[phrase], round(score, 3), count, ["co-mention"]))
            elif not work and common_word(phrase):  # "Maine", "Philanthropy": frequent here, common everywhere
                terms.append(Mined(phrase, "term", first[phrase], round(score, 3), count, ["co-mention"]))
            else:
                terms.append(Mined(phrase, kind if work else "term", first[phrase], round(score, 3), count,
                                   ["reverse-query", "co-mention"]))
        elif work and works[phrase] >= 2 and common_word(phrase) and (
                " " in phrase or general_zipf(phrase.casefold()) < FUNCTION_ZIPF and plain_titles[phrase]):
            # a title in common words ("Misery", "The Stand"), seen as a title twice (a one-word one plainly once:
            # "Spanish", capitalised everywhere, is near "album" but never a title): counts only as a title
            terms.append(Mined(phrase, kind, first[phrase], round(score, 3), count, ["reverse-query"]))
    terms.sort(key=lambda t: t.score * math.log2(1 + t.count), reverse=True)
    terms = terms[:MAX_TERMS] + _coined(lower, lower_first, total, documents, known | dropped | {
        t.text.casefold() for t in terms})
    have = {t.text.casefold() for t in terms}
    corpus = "\n".join(text for _, text in documents)
    for t in terms:
        if t.kind in ("work", "appearance") and (owner := _someone_elses(t.text, corpus, name_words)) is not None:
            # "Bram Stoker's Dracula": a work the documents give to someone else is no handle on the target
            t.kind, t.uses, t.owner = "others-work", ["co-mention"], owner
    for work, sim in (suggested or {}).items():
        if work.casefold() in have or work.casefold() in dropped or work.casefold() in known or any(
                w.casefold() in known for w in work.split()):  # "A Film by Hina Ameen": the name, not a work
            continue
        at = corpus.find(work)
        if (documents and at < 0) or (not documents and sim < MODEL_WORK_MIN_SIM):
            continue  # the model's word against the documents: a work they never mention is not kept
        terms.append(Mined(work, "work", "model", sim, corpus.count(work) if documents else 0,
                           ["reverse-query"] if common_word(work) else ["reverse-query", "co-mention"]))
    term_set = [t.text for t in terms]
    scored = []
    for _, order, sentence, origin in facts:
        if sentence.casefold() in dropped:
            continue
        density = sum(1 for t in term_set if t in sentence)
        scored.append((-density, order, sentence, origin))
    scored.sort()
    kept, seen = [], set()
    for density, _, sentence, origin in scored:
        key = sentence.casefold()
        if key in seen:
            continue
        seen.add(key)
        kept.append(Mined(sentence, "fact", origin, float(-density), 1, ["described", "output"]))
        if len(kept) >= MAX_FACTS:
            break
    roles = _roles(description, [f.text for f in kept])
    return Knowledge(terms, kept, roles, {"documents": len(documents), "documents_naming_target": on_target_docs,
                                          "words": total, "candidate_phrases": len(counts),
                                          "fact_sentences": len(facts)})


def as_file(known: Knowledge) -> KnowledgeFile:
    """The artifact's form (policy/artifacts.py owns it)."""
    return KnowledgeFile(items=[KnowledgeItem(text=m.text, kind=m.kind, origin=m.origin, score=m.score, count=m.count,
                                              uses=m.uses, owner=m.owner) for m in known.items],
                         roles=known.roles, stats=known.stats)
