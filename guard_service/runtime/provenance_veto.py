"""TraceAlign-style provenance veto, per request: the engine never emits L consecutive tokens that occur
verbatim in a policy's protected corpus.

The matcher keeps the longest suffix of the output (up to L-1 tokens) that occurs in the corpus as an SA
interval and updates it per token: usually one narrowing step, a short re-search only when the match breaks.
Once that suffix is L-1 tokens long, every token that would extend it to L is banned; from L/2 on, those
continuations get a soft penalty so the model drifts away before the hard veto is needed.
"""

from __future__ import annotations

from guard_service.runtime.suffix_index import Interval, SuffixIndex


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
