"""Token-id trie over a policy's forbidden sequences, and the per-request matcher that walks it.

Semantics (as vLLM's bad_words, but over many spellings at once): while the generated suffix matches all but
the last token of a forbidden sequence, that last token is banned. Single-token sequences are always banned.
The matcher keeps the set of partial matches alive and advances it one token at a time: no re-search.

Truncated and bent spellings ("Hermion", "J.K.R", "J.K. Row", "Rowle", "Harry Potts") never complete a
sequence. So once a matcher has spelled enough of a forbidden string from a word boundary (`committed`: at
least `min_chars` characters and `min_tokens` tokens), it reports every way on: all the node's children (the
next piece of the string, whatever it is: " Row" after "J.K."), and, where a forbidden word is still open
(a child continues it with a letter), that every word-continuing token must go too, so the word ends there as
a different, shorter word ("Her", "Row") instead of a recognisable part of the name. A separator token
(".", "-", an apostrophe) that is not itself the next piece leaves a match of at least `HOLD_CHARS` characters
where it was, so "Herm-" still cannot go on with "ione" or "i". Word classes come from the vocabulary
(`TokenClasses`); without them only exact completions are banned.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from guard_service.policy.tokenization import TokenClasses

ROOT = 0
HOLD_CHARS = 3  # matches at least this long survive a separator token that is not their next piece


class TokenTrie:
    __slots__ = ("children", "terminal_next", "always_banned", "classes", "n_classes", "open_word", "chars", "depth")

    def __init__(self, sequences: Iterable[Sequence[int]], classes: TokenClasses | None = None):
        self.children: list[dict[int, int]] = [{}]
        ends: list[bool] = [False]
        self.chars: list[int] = [0]  # surface characters spelled from the root (first token's spaces not counted)
        self.depth: list[int] = [0]  # tokens from the root
        for seq in sequences:
            node = ROOT
            for tok in seq:
                nxt = self.children[node].get(tok)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][tok] = nxt
                    self.children.append({})
                    ends.append(False)
                    width = int(classes.chars[tok]) if classes is not None and tok < len(classes) else 1
                    self.chars.append(self.chars[node] + width)
                    self.depth.append(self.depth[node] + 1)
                node = nxt
            ends[node] = True
        # For each node: the tokens that would complete a forbidden sequence from here.
        self.terminal_next: list[tuple[int, ...]] = [
            tuple(t for t, child in kids.items() if ends[child]) for kids in self.children]
        self.always_banned = self.terminal_next[ROOT]
        self.classes = classes
        self.n_classes = len(classes) if classes is not None else 0
        cont = classes.continues_word if classes is not None else None
        self.open_word: list[bool] = [
            node != ROOT and cont is not None and any(t < len(cont) and cont[t] for t in kids)
            for node, kids in enumerate(self.children)]

    def __len__(self) -> int:
        return len(self.children)


class TrieMatcher:
    """Partial matches of one request against one trie."""

    __slots__ = ("trie", "nodes", "completed", "_after_letter")

    def __init__(self, trie: TokenTrie):
        self.trie = trie
        self.nodes: dict[int, bool] = {}  # node -> whether its match began at a word boundary
        self.completed = 0  # forbidden sequences that were generated anyway (a ban was off or bypassed)
        self._after_letter = False

    def seed(self, tokens: Iterable[int]) -> None:
        """Walk the prompt's tail: a forbidden string begun in the prompt must not be finished by the output."""
        completed = self.completed
        for tok in tokens:
            self.feed(tok)
        self.completed = completed

    def feed(self, token: int) -> None:
        trie = self.trie
        children = trie.children
        classes = trie.classes
        known = 0 <= token < trie.n_classes
        starts_word = not (known and classes.continues_word[token] and self._after_letter)
        holds = known and classes.separator[token]
        nxt: dict[int, bool] = {}
        for node, anchored in (*self.nodes.items(), (ROOT, starts_word)):
            child = children[node].get(token)
            if child is not None:
                if token in trie.terminal_next[node]:
                    self.completed += 1
                if children[child]:
                    nxt[child] = nxt.get(child, False) or anchored
            elif holds and node != ROOT and trie.chars[node] >= HOLD_CHARS:
                nxt[node] = nxt.get(node, False) or anchored
        self.nodes = nxt
        self._after_letter = bool(known and classes.ends_in_letter[token])

    def banned(self) -> set[int]:
        out: set[int] = set()
        for node in self.nodes:
            out.update(self.trie.terminal_next[node])
        return out

    def committed(self, min_chars: int, min_tokens: int = 1) -> tuple[set[int], bool]:
        """(every token that continues a forbidden string spelled this far, whether a forbidden word is open
        and every word-continuing token should be banned too), over matches of at least `min_chars`
        characters and `min_tokens` tokens that began at a word boundary."""
        trie = self.trie
        out: set[int] = set()
        open_word = False
        for n, anchored in self.nodes.items():
            if anchored and trie.chars[n] >= min_chars and trie.depth[n] >= min_tokens:
                out.update(trie.children[n])
                open_word = open_word or trie.open_word[n]
        return out, open_word
