"""Output leak detector (API process): finds forgotten knowledge in what was actually generated.

Lexical: any spelling variant of a policy's forbidden strings (the same list the trie was built from),
case-insensitive, on word boundaries, scanned incrementally as the stream grows. Names are also matched unit by
unit (letters and digits, whatever separates them: "J K Rowling", "Harry-Potter", "H a r r y"), and truncated
or bent spellings of a name count as leaks too: most of a single-word name ("Hermion", "Rowle"), a name's
first word(s) followed by the start of the next ("J.K.R", "Harry Potts"), a name of two or more words with typos
("Xin Le Wiliams", often the question's own misspelling repeated), a name written in another script by sound
("Гарри Поттер", "哈利·波特"). Semantic: each generated sentence
(`review`, as the output guard releases held-back text; the rest at `finish`) against the policy's facts
(operator-given and expanded): a leak when it restates one closely, or fairly closely while naming what the
target's facts name (the prompt side's evidence rule) and no one else ("Rhoda Mbalazi won the ... Literary
Award for African American literature" is about her), and is no closer to the policy's retain examples.

The scan starts at the prompt's tail: a name begun in the prompt and finished by the output is a leak; one that
lies wholly in the prompt is not. Every active policy that applies to the request is scanned, matched or not: a
leak on an unmatched prompt is a classifier miss that operators must see. A policy with `on_leak: act` (the
default) acts on it (`Leak.act`: frontend/output_guard.py refuses or steers the choice); `report` only records
it. Compiles nothing of its own: it reads forbidden.json and the facts and evidence in classifier.json.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import re
from dataclasses import dataclass, field

import numpy as np

from guard_service.embedding import EMBEDDINGS, embed
from guard_service.guards.base import GuardComponent, OutputScanner, PromptText
from guard_service.guards.evidence import Evidence, EvidenceDetector, evidence_reason, names_someone_else
from guard_service.guards.spelling import (
    NameIndex,
    Prefixes,
    TypoIndex,
    Units,
    may_misspell,
    merge,
    misspelled,
    name_index,
    name_leaks,
    squash,
    trailing_chain,
    typo_index,
    units_of,
)
from guard_service.guards.transliteration import SoundName, pending, sound_index, transliterated
from guard_service.policy.artifacts import PolicyArtifact
from guard_service.policy.confusables import fold_same_length, latin_text
from guard_service.policy.forbidden import is_name, variants
from guard_service.policy.knowledge import general_zipf
from guard_service.policy.request import UnlearningRequest
from guard_service.policy.sound import cjk
from guard_service.policy.text import SENTENCE

SEMANTIC_MIN_CHARS = 20
FACT_MIN_SIM = 0.75  # a generated sentence this close to a forbidden fact restates it
FACT_EVIDENCE_SIM = 0.6  # ... or this close while naming what the target's facts name
RESCAN_CHARS = 96  # a leak may straddle deltas: each feed rescans this much of what came before
LATIN_CONTEXT_CHARS = 1000  # how much of the text says whether it is Latin text (bounded: it is read every feed)
# Partial release (`LeakScanner.releasable`). A sentence whose words so far come this close to a fact (cosine, the
# same embedder) is held from there to its end and judged whole; calibrated by `bench/partial_sentences.py`.
NEAR_SIM = 0.55
UNWEIGHED_ZIPF = 6.0  # words this frequent in general English ("the", "and", "in") are not weighed alone
# per WEIGH_MARGIN a partial sentence scores below NEAR_SIM, one more rare word before it is weighed again (at most
# WEIGH_EVERY_MAX): one rare word moves its score by <= 0.10 in 90% of cases
WEIGH_MARGIN, WEIGH_EVERY_MAX = 0.1, 3

PENDING_UNITS = 24  # trailing units a name spelled letter by letter may still be completing ("H a r r y P o t")
CJK_PENDING_CHARS = 16  # trailing CJK characters a name may still be completing (CJK needs no word boundaries)


def weigh_every(score: float, near: float = NEAR_SIM) -> int:
    """After a partial sentence scored `score` (far), its next weighing is due at this many more rare words: every
    one within `WEIGH_MARGIN` of `NEAR_SIM`, one more per margin further, at most `WEIGH_EVERY_MAX`. A rare word
    moved a partial sentence's score by ≤ 0.10 in 90% of cases (`bench.partial_sentences`)."""
    return min(WEIGH_EVERY_MAX, 1 + int(max(0.0, near - score) / WEIGH_MARGIN))


def _trie_regex(node: dict[str, dict]) -> str:
    """A regex for the words of a character trie, sharing their prefixes: the engine then follows one branch
    per character instead of trying every word at every position. Longer words are tried first."""
    branches = [re.escape(ch) + _trie_regex(child) for ch, child in sorted(node.items()) if ch]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if "" in node:  # a word ends here: the rest is optional
        return f"(?:{body})?" if len(branches) == 1 else body + "?"
    return body


def _trie(words: set[str]) -> str:
    trie: dict[str, dict] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}
    return _trie_regex(trie)


def leak_pattern(variants: list[str]) -> re.Pattern[str]:
    """Any spelling, case-insensitive, on word boundaries; a CJK spelling anywhere (those scripts need not
    separate words: "孔子是")."""
    spellings = {v.casefold() for v in variants if v}
    wide = {v for v in spellings if cjk(v)}
    parts = [r"(?<!\w)" + _trie(spellings - wide) + r"(?!\w)"] if spellings - wide else []
    parts += [_trie(wide)] if wide else []
    return re.compile("|".join(parts) or r"(?!)", re.IGNORECASE)


@dataclass(frozen=True, eq=False)
class Known:
    """One policy's part of the scan: its spellings, its names (for pieces and truncations), its facts."""

    pattern: re.Pattern[str]  # every forbidden string's spellings (facts' phrases too: reported)
    whole: frozenset[str]  # the casefolded spellings of the target's whole names: acted on
    names: NameIndex  # whole names, for spellings by pieces and truncations (acted on)
    typos: TypoIndex  # the same, for typos (acted on)
    sounds: tuple[SoundName, ...]  # the same, by sound in other scripts (acted on)
    fact_vectors: np.ndarray  # embedded once at load
    retain_vectors: np.ndarray  # the policy's retain examples: what must stay answerable
    evidence: Evidence
    act: bool  # on_leak == "act"
    shadow: bool = False  # a shadow-mode policy: its leaks are what it would have acted on, never acted on
    phrases: frozenset[str] = frozenset()  # every forbidden string squashed (facts' phrases too): what a tail may
    # still grow into that, once whole, holds its sentence until it is judged


@dataclass
class Leak:
    policy: str
    kind: str  # lexical | semantic
    text: str
    start: int  # offset in the generated text (0 when the leak began in the prompt)
    score: float | None = None
    act: bool = False  # its policy acts on it (refuses or steers the choice)
    would: bool = False  # its policy would act on it if enforced (a shadow-mode policy's leaks: act is False)

    def as_dict(self) -> dict:
        return {"policy": self.policy, "kind": self.kind, "text": self.text, "start": self.start,
                "score": None if self.score is None else round(self.score, 4)}


def _leak(known: Known, key: str, kind: str, text: str, start: int, score: float | None, acts: bool) -> Leak:
    """`acts`: this kind of leak is acted on (whole names, facts restated); its policy decides whether it is."""
    would = known.act and acts
    return Leak(key, kind, text, start, score, act=would and not known.shadow, would=would)


def _segments(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Matrices stacked, and where each begins (for a per-part max with `np.maximum.reduceat`)."""
    starts = np.cumsum([0] + [len(x) for x in parts[:-1]])
    return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32), starts


@dataclass(frozen=True)
class _Combined:
    """Every scanned policy's part at once, so a text is read once, not once per policy. Built once per set of
    active policies."""

    names: NameIndex  # tagged by policy key
    typos: TypoIndex
    sounds: tuple[SoundName, ...]  # tagged by policy key
    spelled: re.Pattern[str] | None  # any policy's spellings: a text none of them spells is done with at once
    with_facts: list[int]  # the policies (by position) that have facts, in the order of `facts`
    facts: np.ndarray
    fact_starts: np.ndarray
    retain: np.ndarray  # the retain examples of the policies in `with_facts` that have them
    retain_starts: np.ndarray
    retain_of: list[int]  # per policy in `with_facts`: its segment in `retain`, or -1
    prefixes: Prefixes  # every spelling of an acting policy, squashed: what a text's tail may still be growing into
    typo_words: int  # the most words a name with typos may take (its words and one more)


@functools.lru_cache(maxsize=64)
def _combined(policies: tuple[tuple[str, Known], ...]) -> _Combined:
    spelled = (re.compile("|".join(f"(?:{k.pattern.pattern})" for _, k in policies), re.IGNORECASE)
               if policies else None)
    with_facts = [i for i, (_, k) in enumerate(policies) if len(k.fact_vectors)]
    facts, fact_starts = _segments([policies[i][1].fact_vectors for i in with_facts])
    retained = [i for i in with_facts if len(policies[i][1].retain_vectors)]
    retain, retain_starts = _segments([policies[i][1].retain_vectors for i in retained])
    retain_of = [retained.index(i) if i in retained else -1 for i in with_facts]
    sounds = tuple(dataclasses.replace(n, tag=key) for key, k in policies for n in k.sounds)
    names, typos = merge((key, k.names) for key, k in policies), merge((key, k.typos) for key, k in policies)
    prefixes = Prefixes([n.squashed for ns in names.values() for n in ns]
                        + [w for _, k in policies if k.act for w in k.phrases])  # whole names among them
    typo_words = max((len(n.words) + 1 for ns in typos.values() for n in ns), default=0)
    return _Combined(names, typos, sounds, spelled, with_facts, facts, fact_starts, retain, retain_starts,
                     retain_of, prefixes, typo_words)


@dataclass
class LeakScanner(OutputScanner):
    """One per generated choice. `feed` the growing text; it returns new lexical leaks. `prompt_tail` is the
    end of the prompt the output continues."""

    policies: list[tuple[str, Known]]  # (policy key, its part)
    prompt_tail: str = ""
    text: str = field(init=False)  # prompt tail + output
    leaks: list[Leak] = field(default_factory=list)
    _scanned: int = field(init=False)
    _judged: int = 0  # output characters the semantic check has read
    _finished: bool = False
    _pending: int = 0  # where (in `text`) the tail begins that may still grow into a spelling acted on
    _near: int = -1  # the open sentence (where it begins) came near a fact: held to its end
    _weighed: tuple[int, int, float | None] = (-1, 0, None)  # (open sentence, its words, their score) last weighed

    def __post_init__(self) -> None:
        self.text = self.prompt_tail
        self._folded = fold_same_length(self.text)  # what the names are looked for in: offsets of `text`
        self._scanned = len(self.prompt_tail)
        self._all = _combined(tuple(self.policies))
        self._known = dict(self.policies)
        self._order = {key: i for i, (key, _) in enumerate(self.policies)}

    @property
    def output(self) -> str:
        return self.text[len(self.prompt_tail):]

    def _found(self, key: str, known: Known, start: int, end: int, name: bool) -> Leak | None:
        """A lexical leak; acted on only if it spells a whole name (a phrase of the target's facts, "Cape Town",
        is the target's only in context: the semantic check judges that)."""
        offset = len(self.prompt_tail)
        rel = max(0, start - offset)
        if end <= offset:
            return None
        text = self.text[max(start, 0):end]  # as generated; the name it spells is read folded
        leak = _leak(known, key, "lexical", text, rel, None,
                     name or self._folded[max(start, 0):end].casefold() in known.whole)
        # one leak per place, except that the whole name ("Harry Potter") outranks its first word ("Harry"), seen
        # as a phrase of the facts while the stream had not yet reached the rest
        if any(lk.policy == key and lk.start == rel and (lk.would or not leak.would) for lk in self.leaks):
            return None
        return leak

    def _spans(self, text: str, units: Units, window: int, final: bool,
               typo_window: int = 0) -> dict[str, list[tuple[int, int, bool]]]:
        """Per policy, (start, end, names a name) of what its spellings match in the text from `window` on (names
        with typos: from `typo_window` on, if later); the text's words are split once and its names looked up once
        for all policies."""
        spans: dict[str, list[tuple[int, int, bool]]] = {}
        if self._all.spelled is not None and self._all.spelled.search(text, window) is not None:
            for key, known in self.policies:
                if hits := [(m.start(), m.end(), False) for m in known.pattern.finditer(text, window)
                            if m.end() > self._scanned or final]:
                    spans[key] = hits
        for start, end, key in (name_leaks(text, self._all.names, window, final, units)
                                + misspelled(text, self._all.typos, max(window, typo_window), final, units)
                                + transliterated(text, self._all.sounds, window, final)):
            spans.setdefault(key, []).append((start, end, True))
        return spans

    def _scan(self, final: bool) -> list[Leak]:
        """Every policy over the new text (and a little before it)."""
        window = max(0, self._scanned - RESCAN_CHARS)
        found: list[Leak] = []
        # look-alike letters folded ("Ј.К. Rowling" in Cyrillic) where the scan reads
        tail = self.text[window:]
        self._folded = self._folded[:window] + (tail if tail.isascii() else fold_same_length(
            tail, latin_text(self.text[-LATIN_CONTEXT_CHARS:])))
        text = self._folded
        units = units_of(text)
        # A name with typos not found before ends in a word that ends in the new text, and begins at most
        # `typo_words` words before it (comparing each word is the scan's dearest part); unless folding may
        # have changed the text before it.
        last = bisect.bisect_left(units, self._scanned, key=lambda u: u[2])
        typos_from = (0 if not tail.isascii() else len(text) if last == len(units)
                      else units[max(0, last - self._all.typo_words)][1])
        spans = self._spans(text, units, window, final, typos_from)
        for key in sorted(spans, key=self._order.__getitem__):  # policy by policy, as they were given
            for start, end, name in sorted(spans[key]):
                leak = self._found(key, self._known[key], start, end, name)
                if leak is not None:
                    found.append(leak)
                    self.leaks.append(leak)
        if not final:
            self._pending = self._pending_at(text, units)
        return found

    def _pending_at(self, text: str, units: Units) -> int:
        """Where the text's tail begins that may still grow into a spelling acted on (the output guard holds it
        back until it is decided): a start of a name's spelling (squashed, "J. K. Row"), a name's first words
        within its typo budget ("Hary Pot"), the start of a name by sound ("Гарри По"), or what the scan finds
        once the text is taken as ended ("Harry Potts", whose last word may still grow)."""
        first, open_end = trailing_chain(text, units, PENDING_UNITS)
        hold = len(text)
        if open_end:
            # the names with typos that end at the end (none: no policy has a name of two words)
            ends = units[max(first, len(units) - self._all.typo_words)][1] if self._all.typo_words else len(text)
            for key, hits in self._spans(text, units, units[first][1], final=True, typo_window=ends).items():
                for start, end, name in hits:
                    leak = self._found(key, self._known[key], start, end, name)
                    if leak is not None and leak.act:
                        hold = min(hold, start)
            last = units[-1]
            for at in range(max(last[1], len(text) - CJK_PENDING_CHARS), len(text)):  # CJK needs no word breaks
                if cjk(text[at]) and self._all.prefixes.begins(squash(text[at:])):
                    hold = min(hold, at)
                    break
        typos = self._all.typos
        for i in range(first, len(units)):
            if units[i][1] >= hold:
                break
            # a typo'd name's candidates as `misspelled` finds them: by its first word's first letter, or its
            # second's (a name whose first letter is mistyped is held from its second word on)
            maybe = (typos.get((0, units[i][0][0]), ()) + (typos.get((1, units[i + 1][0][0]), ())
                                                            if i + 1 < len(units) else ()))
            if (self._all.prefixes.begins(squash(text[units[i][1]:]))
                    or (len(units) - i <= self._all.typo_words
                        and any(may_misspell(units, i, name, open_end) for name in maybe))):
                hold = units[i][1]
                break
        by_sound = pending(text, self._all.sounds)
        return hold if by_sound is None else min(hold, by_sound)

    def feed(self, delta: str) -> list[Leak]:
        self.text += delta
        found = self._scan(final=False)
        self._scanned = len(self.text)
        return found

    def review(self, upto: int | None = None) -> list[Leak]:
        """The semantic check of the output's sentences up to `upto` (all of it: None) not read before; returns
        its new leaks. Embeds: call off the event loop."""
        end = len(self.output) if upto is None else upto
        chunk, start = self.output[self._judged:end], self._judged
        self._judged = max(self._judged, end)
        spans = [(m.start() + start, m.group().strip()) for m in SENTENCE.finditer(chunk)]
        spans = [(at, s) for at, s in spans if len(s) >= SEMANTIC_MIN_CHARS]
        both = self._all
        if not spans or not both.with_facts:
            return []
        vectors = embed([s for _, s in spans])
        # Each sentence's best fact (and retain example) per policy, all policies in one product.
        sims = np.maximum.reduceat(vectors @ both.facts.T, both.fact_starts, axis=1)
        kept = (np.maximum.reduceat(vectors @ both.retain.T, both.retain_starts, axis=1) if len(both.retain)
                else np.zeros((len(spans), 0)))
        texts: dict[int, PromptText] = {}
        found = []
        for row, col in zip(*np.nonzero(sims >= FACT_EVIDENCE_SIM), strict=True):
            key, known = self.policies[both.with_facts[col]]
            score, r = float(sims[row, col]), both.retain_of[col]
            if r >= 0 and score <= float(kept[row, r]):
                continue
            at, sentence = spans[row]
            text = texts.setdefault(row, PromptText(sentence, vectors[:0]))
            if score >= FACT_MIN_SIM or (evidence_reason(text, known.evidence)
                                         and not names_someone_else(text, known.evidence)):
                found.append(_leak(known, key, "semantic", sentence, at, score, True))
        self.leaks.extend(found)
        return found

    def releasable(self, reviewed: int) -> int:
        """How much of the output may be released (the output guard calls it after `review`; may embed: off the
        event loop): everything before the tail that may still grow into a name (`_pending_at`) and before the
        open sentence's last word (nothing follows it yet: it may be the sentence's last), unless that sentence has
        come near a fact. Its words so far are compared with every policy's facts in one product; from the first
        time they come within `NEAR_SIM` (or a fact's phrase appears in it) the rest of the sentence waits for its
        judgement. So a sentence judged a leak is never released whole, one heading for a fact is held from where
        it turns, and text no fact is near streams a word behind the model."""
        lexical = max(0, self._pending - len(self.prompt_tail))
        out, start = self.output, self._judged
        partial = out[start:]
        if not self._all.with_facts:
            return lexical
        if self._near == start or any(lk.start >= start and lk.kind == "lexical" for lk in self.leaks):
            self._near = start  # the open sentence names what a fact names (from its first word on): judged whole
            return start
        if len(partial.strip()) + 2 < SEMANTIC_MIN_CHARS:
            return lexical  # too short to be weighed (a phrase of the facts in it is held by `lexical`)
        last = partial.rstrip()
        words = last[:len(last) - len(last.split()[-1])] if last == partial else partial
        weighed, score = self._weighed[1:] if self._weighed[0] == start else (0, None)
        # Words as frequent as "the", "of", "was" are not weighed alone; rarer ones are weighed every `due`-th, the
        # sentence's words between them released on its last score (a far sentence moves a little a word).
        rare = sum(general_zipf(w.casefold()) < UNWEIGHED_ZIPF for w in words[weighed:].split())
        due = 1 if score is None else weigh_every(score)
        if words.strip() and rare >= due:
            score = float(np.max(embed([words.strip()]) @ self._all.facts.T))
            if score >= NEAR_SIM:
                self._near = start
                return start
            weighed = len(words)
            self._weighed = (start, weighed, score)
        return min(lexical, start + (weighed if score is None else len(words)))

    def finish(self) -> list[Leak]:
        """Judge what only the end can tell (a last word that might have grown) and the sentences `review` has
        not read. Embeds: call off the event loop."""
        if not self._finished:
            self._finished = True
            self._scan(final=True)
            self.review()
        return self.leaks

    def findings(self) -> list[Leak]:
        return self.leaks

    def summary(self) -> list[dict]:
        return [lk.as_dict() for lk in self.leaks]


class LeakDetector(GuardComponent):
    name = "leak"

    def load(self, artifact: PolicyArtifact, spec: UnlearningRequest) -> Known:
        forbidden = artifact.forbidden
        whole = frozenset(v.casefold() for item in forbidden.items if is_name(item) for v in variants(item.text))
        names = name_index(forbidden.items, whole_only=True)
        return Known(leak_pattern(forbidden.variants), whole, names, typo_index(names),
                     sound_index(forbidden.crosslingual),
                     EMBEDDINGS.get([*artifact.classifier.facts, *artifact.knowledge.facts()]),
                     EMBEDDINGS.get(list(spec.retain_examples)), EvidenceDetector().load(artifact, spec),
                     spec.on_leak == "act", spec.mode == "shadow",
                     frozenset(squash(v) for v in forbidden.variants))

    def output_scanner(self, parts: list[tuple[str, Known]], prompt_tail: str) -> LeakScanner:
        return LeakScanner([(key, part) for key, part in parts if part is not None], prompt_tail)
