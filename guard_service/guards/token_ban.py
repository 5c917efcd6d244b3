"""Token-ban trie (worker, per row): a hard ban on every token that would complete any tokenization of a
forbidden string, and once enough of one is spelled from a word boundary, on every way to go on with it (see
trie.py). Steered rows walk one trie per matched policy (every forbidden string; three characters commit);
every other guarded row walks one trie combined over the whole names of all watching policies (two tokens and
four characters commit), so a row walks one trie per step however many policies are active. Compiles the trie
arrays of the artifact."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from guard_service.guards.base import Bans, Compiled, CompileInput, GuardComponent, RowGuard, WorkerContext
from guard_service.guards.trie import TokenTrie, TrieMatcher
from guard_service.metrics import definitions as metrics
from guard_service.policy import tokenization
from guard_service.policy.artifacts import ArtifactWriter, PolicyArtifact

# (characters, tokens) of a forbidden string spelled from a word boundary before every way to go on with it is
# banned. Steered rows are about the target, so three characters suffice ("Her|mione", "Row|ling"); watch mode
# runs on every other request, so it waits for two tokens and four characters of a whole name ("J.K.| Row",
# "Harry Pot|ts"): one common word (" Apple", " Her") is never enough.
STEER_COMMIT = (3, 1)
WATCH_COMMIT = (4, 2)
WATCH_BANS = metrics.TOKENS_PENALIZED.labels("watch", "token")  # one combined trie: not per policy


@dataclass(frozen=True)
class Trie:
    trie: TokenTrie  # every forbidden sequence: steered rows
    watch_sequences: list[list[int]]  # whole names only: watch mode
    ban: bool  # strength.ban_forbidden


class _Row(RowGuard):
    def __init__(self, trie: TokenTrie, commit: tuple[int, int], counter: Any):
        self.matcher, self.commit, self.counter = TrieMatcher(trie), commit, counter
        self.always = frozenset(trie.always_banned)  # single-token forbidden strings
        self.idle = Bans(hard=self.always)  # most steps: no partial match alive

    def seed(self, tokens: Any) -> None:
        self.matcher.seed(tokens)

    def feed(self, token: int) -> None:
        self.matcher.feed(token)

    def bans(self) -> Bans:
        if not self.matcher.nodes:
            return self.idle
        ways_on, open_word = self.matcher.committed(*self.commit)
        hard = self.matcher.banned() | ways_on
        if hard or open_word:
            self.counter.inc()
        return Bans(hard=hard | self.always, stop_word=open_word)


class TokenBan(GuardComponent):
    name = "token_ban"
    stage = "trie"

    def compile(self, inp: CompileInput, out: ArtifactWriter) -> Compiled:
        tok = inp.tokenizer
        by_string = tokenization.sequences_for(tok, inp.strings)
        strict = set().union(*(by_string[s] for s in inp.whole))
        # canonical spellings of whole names, final piece lengthened: also banned everywhere
        strict |= {e for s in inp.whole for form in (s, " " + s)
                   for e in tokenization.extended(tok, tuple(tok.encode(form, add_special_tokens=False)))}
        sequences = sorted(set().union(strict, *by_string.values()))
        out.write_trie(sequences, [s in strict for s in sequences])
        return Compiled(stats={"sequences": len(sequences)})

    def load_worker(self, artifact: PolicyArtifact, ctx: WorkerContext) -> Trie:
        return Trie(TokenTrie(artifact.sequences(), ctx.classes), artifact.sequences(whole_only=True),
                    bool(artifact.manifest.strength["ban_forbidden"]))

    def row_guards(self, steering: list[tuple[Any, Trie]], watching: list[tuple[Any, Trie]],
                   cache: MutableMapping[Any, Any]) -> list[RowGuard]:
        rows: list[RowGuard] = [_Row(part.trie, STEER_COMMIT, policy.penalized("token"))
                                for policy, part in steering if part.ban]
        if watching:
            combo = tuple(policy.key for policy, _ in watching)
            trie = cache.get(combo)
            if trie is None:  # one trie over every watching policy's whole names, per combination
                classes = watching[0][1].trie.classes
                trie = cache[combo] = TokenTrie((s for _, part in watching if part.ban for s in part.watch_sequences),
                                                classes)
            rows.append(_Row(trie, WATCH_COMMIT, WATCH_BANS))
        return rows
