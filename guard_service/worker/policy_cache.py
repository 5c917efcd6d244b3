"""Engine-worker side: a compiled policy version loaded onto the engine's device (every guard component's worker
part of it), cached by key, one cache per worker process.

Versions are immutable on disk, so the cache never invalidates; loading a newer version of a policy evicts the
older ones (rows already using them keep their own reference until they finish). Loads happen ahead of the
engine step where they can (the API process preloads new versions through the worker extension), else on the
first row that names a version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from cachetools import LRUCache

from guard_service.guards import COMPONENTS
from guard_service.guards.base import WorkerContext
from guard_service.metrics import definitions as metrics
from guard_service.policy.artifacts import PolicyArtifact
from guard_service.protocol import PolicyKey


@dataclass(eq=False)  # identity equality: parts hold tensors and tries
class LoadedPolicy:
    key: PolicyKey
    parts: dict[str, Any]  # component name -> what its `load_worker` returned
    _counters: dict[str, Any] = field(default_factory=dict)

    def penalized(self, kind: str) -> Any:
        """This policy's `guard_tokens_penalized_total{kind}` child (resolved once: a labels() lookup per step
        would cost more than the step's work)."""
        if kind not in self._counters:
            self._counters[kind] = metrics.TOKENS_PENALIZED.labels(self.key.id, kind)
        return self._counters[kind]

    def vetoed(self) -> Any:
        if "veto" not in self._counters:
            self._counters["veto"] = metrics.PROVENANCE_VETOES.labels(self.key.id)
        return self._counters["veto"]


log = logging.getLogger(__name__)


def load(root: Path, key: PolicyKey, ctx: WorkerContext) -> LoadedPolicy:
    artifact = PolicyArtifact.open_key(root, key)  # verified again: files can change between the two processes
    return LoadedPolicy(key, {c.name: c.load_worker(artifact, ctx) for c in COMPONENTS})


COMBINATIONS = 64  # per component: more than the rows of one batch use at once


class PolicyCache:
    def __init__(self, root: Path, ctx: WorkerContext, capacity: int = 1024):
        """What is built per *combination* of policies (a combined penalty, one watch trie over every watched
        policy) is kept for the most recent `COMBINATIONS` only: while policies are created and revoked, every
        active set is a new combination. Versions no longer enforced are dropped by `retain` (the API process
        sends the enforced set); that, not this bound, is what stopped the soak's worker growth. A row keeps its
        own reference to what it uses."""
        self.root, self.ctx, self.capacity = root, ctx, capacity
        self._items: OrderedDict[PolicyKey, LoadedPolicy] = OrderedDict()
        self._combined: LRUCache[tuple[PolicyKey, ...], torch.Tensor | None] = LRUCache(COMBINATIONS)
        # components' state shared by rows with the same policies
        self.scratch: dict[str, LRUCache[Any, Any]] = {c.name: LRUCache(COMBINATIONS) for c in COMPONENTS}
        self._lock = threading.Lock()  # preloads (worker extension) and the engine step both load

    def get(self, key: PolicyKey) -> LoadedPolicy:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        began = time.perf_counter()
        policy = load(self.root, key, self.ctx)
        metrics.LOAD_SECONDS.observe(time.perf_counter() - began)
        with self._lock:
            for k in [k for k in self._items if k.id == key.id and k != key]:
                self._evict(k)
            self._items[key] = policy
            while len(self._items) > self.capacity:
                self._evict(next(iter(self._items)))
        log.info("guard: loaded policy %s onto %s", key, self.ctx.device)
        return policy

    def retain(self, keys: set[PolicyKey]) -> None:
        """Keep only these versions (rows using another keep their own reference until they finish; a row that
        names one later loads it again)."""
        with self._lock:
            for k in [k for k in self._items if k not in keys]:
                self._evict(k)

    def _evict(self, key: PolicyKey) -> None:
        self._items.pop(key, None)
        for combo in [c for c in self._combined if key in c]:
            del self._combined[combo]
        for scratch in self.scratch.values():
            for combo in [c for c in scratch if isinstance(c, tuple) and key in c]:
                del scratch[combo]

    def combined_penalty(self, policies: tuple[LoadedPolicy, ...], dense: list[Any]) -> torch.Tensor | None:
        """Sum of the steering policies' dense penalties, cached per combination (one add per row group).
        `dense`: the components that have one."""
        combo = tuple(p.key for p in policies)
        if combo not in self._combined:
            vectors = [v for p in policies for c in dense if (v := c.dense_penalty(p.parts[c.name])) is not None]
            self._combined[combo] = (vectors[0] if len(vectors) == 1 else torch.stack(vectors).sum(0)) \
                if vectors else None
        return self._combined[combo]

    def __len__(self) -> int:
        return len(self._items)
