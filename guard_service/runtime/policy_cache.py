"""Engine-worker side: a compiled policy loaded onto the engine's device, cached by `id@version`.

Versions are immutable on disk, so the cache never invalidates; loading a newer version of a policy evicts
the older ones (rows already using them keep their own reference until they finish).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from guard_service.metrics import definitions as metrics
from guard_service.policy.artifacts import load_semantic, load_sequences, open_verified, version_dir
from guard_service.policy.tokenization import TokenClasses
from guard_service.runtime.suffix_index import SuffixIndex
from guard_service.runtime.trie import TokenTrie

log = logging.getLogger(__name__)


def parse_keys(spec: str) -> list[tuple[str, int]]:
    """"pol_a@3,pol_b@1" -> [("pol_a", 3), ("pol_b", 1)]; raises ValueError on anything else."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        policy_id, _, version = part.rpartition("@")
        if not policy_id or not version.isdigit():
            raise ValueError(f"malformed guard policy key {part!r}")
        out.append((policy_id, int(version)))
    return out


@dataclass(frozen=True)
class Counters:
    """This policy's metric children, resolved once (a labels() lookup per decoding step would cost more)."""

    token_bans: Any
    semantic: Any
    vetoes: Any

    @classmethod
    def for_policy(cls, policy_id: str) -> Counters:
        return cls(metrics.TOKENS_PENALIZED.labels(policy_id, "token"),
                   metrics.TOKENS_PENALIZED.labels(policy_id, "semantic"),
                   metrics.PROVENANCE_VETOES.labels(policy_id))


@dataclass(frozen=True, eq=False)  # identity equality: fields hold tensors and tries
class LoadedPolicy:
    key: str
    trie: TokenTrie
    watch_sequences: list[list[int]]  # whole names only: banned on every request, whatever the classifier said
    penalty: torch.Tensor  # [vocab] on the engine device; +inf where a token is always banned
    ban: bool
    counters: Counters
    provenance: SuffixIndex | None = None
    min_span: int = 8
    soft_penalty: float = 4.0


def load(root: Path, policy_id: str, version: int, vocab_size: int, device: torch.device,
         classes: TokenClasses | None = None) -> LoadedPolicy:
    path = version_dir(root, policy_id, version)
    manifest = open_verified(path)  # the API process verified it too, but files can change between the reads
    strength = manifest.strength
    trie = TokenTrie(load_sequences(path), classes)
    penalty = np.zeros(vocab_size, dtype=np.float32)
    ids, weights = load_semantic(path)
    keep = ids < vocab_size
    penalty[ids[keep]] = weights[keep] * float(strength["semantic_penalty"])
    anchors = np.load(path / "anchor_ids.npy")
    anchors = anchors[anchors < vocab_size]
    penalty[anchors] = np.maximum(penalty[anchors], float(strength["first_token_penalty"]))
    ban = bool(strength["ban_forbidden"])
    if ban:
        always = [t for t in trie.always_banned if t < vocab_size]
        penalty[always] = np.inf
    provenance = SuffixIndex(path / "provenance") if manifest.provenance else None
    return LoadedPolicy(key=f"{policy_id}@{version}", trie=trie, watch_sequences=load_sequences(path, True),
                        penalty=torch.from_numpy(penalty).to(device),
                        ban=ban, counters=Counters.for_policy(policy_id), provenance=provenance,
                        min_span=int(strength["provenance_min_span"]),
                        soft_penalty=float(strength["semantic_penalty"]))


class PolicyCache:
    def __init__(self, vocab_size: int, device: torch.device, capacity: int = 1024,
                 classes: TokenClasses | None = None):
        self.vocab_size, self.device, self.capacity, self.classes = vocab_size, device, capacity, classes
        self._items: OrderedDict[str, LoadedPolicy] = OrderedDict()
        self._combined: dict[tuple[str, ...], torch.Tensor] = {}
        self._watch: dict[tuple[str, ...], TokenTrie] = {}

    def get(self, root: Path, policy_id: str, version: int) -> LoadedPolicy:
        key = f"{policy_id}@{version}"
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit
        began = time.perf_counter()
        policy = load(root, policy_id, version, self.vocab_size, self.device, self.classes)
        metrics.LOAD_SECONDS.observe(time.perf_counter() - began)
        stale = [k for k in self._items if k.rpartition("@")[0] == policy_id]
        for k in stale:
            self._evict(k)
        self._items[key] = policy
        while len(self._items) > self.capacity:
            self._evict(next(iter(self._items)))
        log.info("guard: loaded policy %s onto %s (%d trie nodes)", key, self.device, len(policy.trie))
        return policy

    def _evict(self, key: str) -> None:
        self._items.pop(key, None)
        self._combined = {combo: t for combo, t in self._combined.items() if key not in combo}
        self._watch = {combo: t for combo, t in self._watch.items() if key not in combo}

    def watch_trie(self, policies: tuple[LoadedPolicy, ...]) -> TokenTrie:
        """One trie over the whole names of every watching policy, cached per combination: a row then walks
        one trie per step however many policies are active, instead of one per policy."""
        combo = tuple(p.key for p in policies)
        trie = self._watch.get(combo)
        if trie is None:
            trie = TokenTrie((seq for p in policies if p.ban for seq in p.watch_sequences), self.classes)
            self._watch[combo] = trie
        return trie

    def combined_penalty(self, policies: tuple[LoadedPolicy, ...]) -> torch.Tensor:
        """Sum of the policies' penalty vectors, cached per policy combination (one add per row group)."""
        combo = tuple(p.key for p in policies)
        vec = self._combined.get(combo)
        if vec is None:
            vec = policies[0].penalty if len(policies) == 1 else torch.stack([p.penalty for p in policies]).sum(0)
            self._combined[combo] = vec
        return vec

    def __len__(self) -> int:
        return len(self._items)
