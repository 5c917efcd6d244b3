"""Queries over a policy's provenance suffix array (built by `policy/provenance.py`; files as in
policy/artifacts.py), memory-mapped.

All queries narrow an SA interval one token at a time: inside an interval whose suffixes share their first
`depth` tokens, the tokens at offset `depth` are sorted, so two binary searches find the sub-interval of a
next token. Scalar access goes through memoryviews (much cheaper per element than numpy indexing), and the
first token of a pattern is an O(1) lookup in a per-token bucket table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from guard_service.policy.artifacts import Files

Interval = tuple[int, int]


@dataclass(frozen=True)
class Occurrence:
    document: str
    offset: int  # token offset inside the document


class SuffixIndex:
    def __init__(self, path: Path):
        self.tokens_np = np.load(path / Files.PROVENANCE_TOKENS, mmap_mode="r")
        self.sa_np = np.load(path / Files.PROVENANCE_SA, mmap_mode="r")
        self.tokens = memoryview(np.ascontiguousarray(self.tokens_np)).cast("B").cast(self.tokens_np.dtype.char)
        self.sa = memoryview(np.ascontiguousarray(self.sa_np)).cast("B").cast(self.sa_np.dtype.char)
        self.n = len(self.sa_np)
        self.doc_starts = np.load(path / Files.PROVENANCE_DOC_STARTS)
        self.doc_names = json.loads((path / Files.PROVENANCE_DOC_NAMES).read_text())
        # bucket[t] .. bucket[t+1]: the SA interval of suffixes starting with token t
        counts = np.bincount(self.tokens_np, minlength=int(self.tokens_np.max(initial=0)) + 2)
        self.bucket = np.concatenate([[0], np.cumsum(counts)]).tolist()

    def _tok(self, i: int, depth: int) -> int:
        pos = self.sa[i] + depth
        return self.tokens[pos] if pos < self.n else -1

    def narrow(self, interval: Interval, depth: int, token: int) -> Interval:
        """Sub-interval of suffixes that continue with `token` at offset `depth` (empty: lo == hi)."""
        lo, hi = interval
        if depth == 0:
            if token + 1 >= len(self.bucket):
                return (0, 0)
            return (self.bucket[token], self.bucket[token + 1])
        a, b = lo, hi
        while a < b:  # first i with tok >= token
            m = (a + b) // 2
            if self._tok(m, depth) < token:
                a = m + 1
            else:
                b = m
        start, b = a, hi
        while a < b:  # first i with tok > token
            m = (a + b) // 2
            if self._tok(m, depth) <= token:
                a = m + 1
            else:
                b = m
        return (start, a)

    def find(self, pattern: list[int]) -> Interval:
        interval = (0, self.n)
        for depth, tok in enumerate(pattern):
            interval = self.narrow(interval, depth, tok)
            if interval[0] >= interval[1]:
                return (0, 0)
        return interval

    def count(self, pattern: list[int]) -> int:
        lo, hi = self.find(pattern)
        return hi - lo

    def next_tokens(self, interval: Interval, depth: int, limit: int = 4096) -> list[int]:
        """Distinct tokens that continue the span in the corpus (skipping runs with a binary search each)."""
        lo, hi = interval
        out: list[int] = []
        i = lo
        while i < hi and len(out) < limit:
            tok = self._tok(i, depth)
            if tok >= 0:
                out.append(tok)
            i = self.narrow((i, hi), depth, tok)[1] if tok >= 0 else i + 1
        return out

    def locate(self, interval: Interval, limit: int = 20) -> list[Occurrence]:
        lo, hi = interval
        out = []
        for i in range(lo, min(hi, lo + limit)):
            pos = self.sa[i]
            doc = int(np.searchsorted(self.doc_starts, pos, side="right")) - 1
            out.append(Occurrence(self.doc_names[doc], int(pos - self.doc_starts[doc])))
        return sorted(out, key=lambda o: (o.document, o.offset))

    def longest_spans(self, ids: list[int], min_len: int) -> list[tuple[int, int, Interval]]:
        """Greedy left-to-right maximal matches: (start in ids, length, interval) for length >= min_len."""
        spans = []
        i = 0
        while i < len(ids):
            interval, length = (0, self.n), 0
            while i + length < len(ids):
                nxt = self.narrow(interval, length, ids[i + length])
                if nxt[0] >= nxt[1]:
                    break
                interval, length = nxt, length + 1
            if length >= min_len:
                spans.append((i, length, interval))
                i += length
            else:
                i += 1
        return spans
