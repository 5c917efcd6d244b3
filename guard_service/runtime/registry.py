"""The API process's view of the active policies, refreshed from the shared store.

Polls the store's generation counter (cheap) and reloads only what changed, so a policy activated or
revoked by any replica or the CLI is seen here within one poll interval.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from guard_service.embedding import embed
from guard_service.metrics import definitions as metrics
from guard_service.policy.artifacts import Manifest, load_sequences, read_manifest
from guard_service.policy.request import Action, UnlearningRequest, from_version_spec
from guard_service.runtime.trie import TokenTrie
from guard_service.store.sqlite import PolicyStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)  # identity equality: fields hold arrays and indexes
class ActivePolicy:
    id: str
    version: int
    spec: UnlearningRequest
    manifest: Manifest
    path: Path
    index: faiss.Index
    texts: list[str]
    threshold: float
    refuse_threshold: float
    confident_threshold: float  # semantic-only match above this; between threshold and it, evidence is needed
    aliases: list[str]
    evidence: list[str]
    weak_evidence: list[str]  # single place/genre words: count only beside a matching number
    facts: list[str]
    fact_vectors: np.ndarray  # embedded once at load, for the output leak detector
    trie: TokenTrie  # the same trie the engine enforces, to account for what it did

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"

    @property
    def action(self) -> Action:
        return self.spec.action

    def applies_to(self, model: str, api_key: str | None) -> bool:
        scope = self.spec.scope
        return (not scope.models or model in scope.models) and (not scope.api_keys or api_key in scope.api_keys)


def load_policy(policy_id: str, version: int, path: Path, stored_spec: dict) -> ActivePolicy:
    clf = json.loads((path / "classifier.json").read_text())
    return ActivePolicy(id=policy_id, version=version, spec=from_version_spec(stored_spec)[0],
                        manifest=read_manifest(path), path=path,
                        index=faiss.read_index(str(path / "classifier.faiss")), texts=clf["texts"],
                        threshold=float(clf["threshold"]), refuse_threshold=float(clf["refuse_threshold"]),
                        confident_threshold=float(clf["confident_threshold"]), evidence=list(clf["evidence"]),
                        weak_evidence=list(clf.get("weak_evidence", [])),
                        aliases=list(clf["aliases"]), facts=list(clf.get("facts", [])),
                        fact_vectors=embed(list(clf.get("facts", []))), trie=TokenTrie(load_sequences(path)))


class PolicyRegistry:
    def __init__(self, store: PolicyStore, interval_s: float = 0.5):
        self.store = store
        self.interval_s = interval_s
        self.generation = -1
        self.policies: dict[str, ActivePolicy] = {}  # by policy id

    def refresh(self) -> bool:
        generation = self.store.generation()
        if generation == self.generation:
            return False
        fresh: dict[str, ActivePolicy] = {}
        for req, ver in self.store.active():
            current = self.policies.get(req.id)
            if current is not None and current.version == ver.version:
                fresh[req.id] = current
                continue
            try:
                fresh[req.id] = load_policy(req.id, ver.version, Path(ver.artifact_dir or ""), ver.spec)
            except Exception:
                # Fail closed would mean refusing everything; instead keep the last good version if any.
                log.exception("cannot load %s v%d", req.id, ver.version)
                if current is not None:
                    fresh[req.id] = current
        self.policies = fresh
        self.generation = generation
        metrics.ACTIVE_POLICIES.set(len(fresh))
        return True

    def active(self) -> list[ActivePolicy]:
        return list(self.policies.values())

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.refresh)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("policy refresh failed")
            await asyncio.sleep(self.interval_s)
