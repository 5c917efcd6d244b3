"""Token-id trie over a policy's forbidden sequences, and the per-request matcher that walks it.

Semantics (as vLLM's bad_words, but over many spellings at once): while the generated suffix matches all but
the last token of a forbidden sequence, that last token is banned. Single-token sequences are always banned.
The matcher keeps the set of partial matches alive and advances it one token at a time: no re-search.
"""

from __future__ import annotations

from collections.abc import Iterable

ROOT = 0


class TokenTrie:
    __slots__ = ("children", "terminal_next", "always_banned")

    def __init__(self, sequences: Iterable[list[int]]):
        self.children: list[dict[int, int]] = [{}]
        ends: list[bool] = [False]
        for seq in sequences:
            node = ROOT
            for tok in seq:
                nxt = self.children[node].get(tok)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][tok] = nxt
                    self.children.append({})
                    ends.append(False)
                node = nxt
            ends[node] = True
        # For each node: the tokens that would complete a forbidden sequence from here.
        self.terminal_next: list[tuple[int, ...]] = [
            tuple(t for t, child in kids.items() if ends[child]) for kids in self.children]
        self.always_banned = self.terminal_next[ROOT]

    def __len__(self) -> int:
        return len(self.children)


class TrieMatcher:
    """Partial matches of one request against one trie."""

    __slots__ = ("trie", "nodes", "completed")

    def __init__(self, trie: TokenTrie):
        self.trie = trie
        self.nodes: frozenset[int] = frozenset()
        self.completed = 0  # forbidden sequences that were generated anyway (a ban was off or bypassed)

    def feed(self, token: int) -> None:
        children = self.trie.children
        nxt = set()
        for node in (*self.nodes, ROOT):
            child = children[node].get(token)
            if child is not None:
                if token in self.trie.terminal_next[node]:
                    self.completed += 1
                if children[child]:
                    nxt.add(child)
        self.nodes = frozenset(nxt)

    def banned(self) -> set[int]:
        out: set[int] = set()
        for node in self.nodes:
            out.update(self.trie.terminal_next[node])
        return out
