"""Provenance veto (worker, per row), TraceAlign-style: the engine never emits L consecutive tokens that occur
verbatim in a policy's protected corpus. Steered and watch-mode rows alike are vetoed (watch mode never nudges:
a soft penalty would change unrelated text that shares a phrase). Compiles the provenance suffix array.

The matcher keeps the longest suffix of the output (up to L-1 tokens) that occurs in the corpus as an SA
interval and updates it per token: usually one narrowing step, a short re-search only when the match breaks.
Once that suffix is L-1 tokens long, every token that would extend it to L is banned; from L/2 on, those
continuations get a soft penalty so the model drifts away before the hard veto is needed.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from guard_service.guards.base import Bans, Compiled, CompileInput, GuardComponent, RowGuard, WorkerContext
from guard_service.guards.suffix_index import Interval, SuffixIndex
from guard_service.policy import provenance
from guard_service.policy.artifacts import ArtifactWriter, PolicyArtifact


class ProvenanceMatcher:
    __slots__ = ("index", "window", "soft_from", "recent", "interval", "depth", "vetoes")

    def __init__(self, index: SuffixIndex, min_span: int):
        self.index = index
        self.window = max(1, min_span - 1)  # L-1: the longest match we need to know about
        self.soft_from = max(1, min_span // 2)
        self.recent: list[int] = []
        self.interval: Interval = (0, index.n)
        self.depth = 0
        self.vetoes = 0

    def feed(self, token: int) -> None:
        self.recent.append(token)
        if len(self.recent) > self.window:
            del self.recent[0]
        if self.depth < self.window:
            nxt = self.index.narrow(self.interval, self.depth, token)
            if nxt[0] < nxt[1]:
                self.interval, self.depth = nxt, self.depth + 1
                return
        # The match broke (or would exceed L-1): the new longest matching suffix is at most depth+1 long.
        for k in range(min(self.depth + 1, self.window, len(self.recent)), 0, -1):
            found = self.index.find(self.recent[-k:])
            if found[0] < found[1]:
                self.interval, self.depth = found, k
                return
        self.interval, self.depth = (0, self.index.n), 0

    def continuations(self) -> tuple[list[int], bool]:
        """(tokens that extend the current match in the corpus, whether they are a hard veto)."""
        if self.depth < self.soft_from:
            return [], False
        tokens = self.index.next_tokens(self.interval, self.depth)
        hard = self.depth >= self.window
        if hard and tokens:
            self.vetoes += 1
        return tokens, hard


NOTHING = Bans()


@dataclass(frozen=True)
class Protected:
    index: SuffixIndex
    min_span: int
    soft_penalty: float


class _Row(RowGuard):
    def __init__(self, part: Protected, steering: bool, vetoes: Any):
        self.matcher = ProvenanceMatcher(part.index, part.min_span)
        self.part, self.steering, self.vetoes = part, steering, vetoes

    def feed(self, token: int) -> None:
        self.matcher.feed(token)

    def bans(self) -> Bans:
        tokens, hard = self.matcher.continuations()
        if hard and tokens:
            self.vetoes.inc()
            return Bans(hard=frozenset(tokens))
        if self.steering and tokens:
            return Bans(soft=[(t, self.part.soft_penalty) for t in tokens])
        return NOTHING


class ProvenanceVeto(GuardComponent):
    name = "provenance"

    def compile(self, inp: CompileInput, out: ArtifactWriter) -> Compiled | None:
        spec, tok, documents = inp.spec, inp.tokenizer, inp.documents
        if not documents or spec.strength.documents_as == "knowledge":  # public text: what it says, not its words
            return None
        separator = int(tok.eos_token_id if tok.eos_token_id is not None else 0)
        built = provenance.build(tok, documents, separator, sum(len(d) for _, d in documents))
        out.write_provenance(built.tokens, built.sa, built.doc_starts, built.doc_names)
        return Compiled(provenance={**built.stats, "min_span": spec.strength.provenance_min_span})

    def load_worker(self, artifact: PolicyArtifact, ctx: WorkerContext) -> Protected | None:
        if artifact.provenance_path is None:
            return None
        strength = artifact.manifest.strength
        return Protected(SuffixIndex(artifact.provenance_path), int(strength["provenance_min_span"]),
                         float(strength["semantic_penalty"]))

    def row_guards(self, steering: list[tuple[Any, Protected | None]], watching: list[tuple[Any, Protected | None]],
                   cache: MutableMapping[Any, Any]) -> list[RowGuard]:
        return [_Row(part, steers, policy.vetoed())
                for rows, steers in ((steering, True), (watching, False)) for policy, part in rows if part is not None]
