"""The API process's view of the active policies, refreshed from the shared store.

Polls the store's generation counter (cheap) and reloads only what changed, so a policy activated or
revoked by any replica or the CLI is seen here within one poll interval.

Fail closed: every version is verified when loaded (manifest sha256s, format, and the tokenizer and model it
was compiled for). An active version that cannot be loaded is kept as a `FailedPolicy`: requests it would
apply to are refused (`failed_closed`), it is retried every poll, reported by `/health` and
`guard_policies_failed_closed`, and its error is written to the request (once) for operators.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from guard_service.embedding import embed
from guard_service.metrics import definitions as metrics
from guard_service.policy.artifacts import Manifest, load_sequences, open_verified
from guard_service.policy.request import Action, Scope, UnlearningRequest, from_version_spec
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

    def applies_to(self, model: str, tenant: str | None) -> bool:
        return in_scope(self.spec.scope, model, tenant)


def in_scope(scope: Scope, model: str, tenant: str | None) -> bool:
    """Whether a policy scoped to `scope` covers a request. `scope.api_keys` names tenants; a request with no
    tenant (a server without client keys) cannot prove it is not one, so tenant-scoped policies cover it."""
    return (not scope.models or model in scope.models) and (
        not scope.api_keys or tenant is None or tenant in scope.api_keys)


@dataclass(frozen=True)
class FailedPolicy:
    """An active version this process cannot load: it refuses every request it would apply to."""

    id: str
    version: int
    scope: Scope | None  # None when even the stored spec is unreadable: then it applies to everything
    error: str

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"

    def applies_to(self, model: str, tenant: str | None) -> bool:
        return self.scope is None or in_scope(self.scope, model, tenant)


def load_policy(policy_id: str, version: int, path: Path, stored_spec: dict,
                model_dir: Path | None = None) -> ActivePolicy:
    """Load one verified version; `model_dir`: the served model, whose tokenizer and config it must match."""
    manifest = open_verified(path, model_dir)
    clf = json.loads((path / "classifier.json").read_text())
    return ActivePolicy(id=policy_id, version=version, spec=from_version_spec(stored_spec)[0],
                        manifest=manifest, path=path,
                        index=faiss.read_index(str(path / "classifier.faiss")), texts=clf["texts"],
                        threshold=float(clf["threshold"]), refuse_threshold=float(clf["refuse_threshold"]),
                        confident_threshold=float(clf["confident_threshold"]), evidence=list(clf["evidence"]),
                        weak_evidence=list(clf.get("weak_evidence", [])),
                        aliases=list(clf["aliases"]), facts=list(clf.get("facts", [])),
                        fact_vectors=embed(list(clf.get("facts", []))), trie=TokenTrie(load_sequences(path)))


class PolicyRegistry:
    def __init__(self, store: PolicyStore, interval_s: float = 0.5, model_dir: Path | None = None,
                 target_names_in_metrics: bool = False, worker: str = "api"):
        self.store = store
        self.interval_s = interval_s
        self.model_dir = model_dir
        self.target_names_in_metrics = target_names_in_metrics
        self.worker = worker
        self.generation = -1
        self.policies: dict[str, ActivePolicy] = {}  # by policy id
        self.failed: dict[str, FailedPolicy] = {}
        self._lock = threading.Lock()  # one refresh at a time (the poll loop, a revoke, a compile)

    def refresh(self) -> bool:
        """Reload what changed; retry what failed. Blocking (store, files, embedder): call off the loop."""
        with self._lock:
            generation = self.store.generation()
            if generation == self.generation and not self.failed:
                return False
            fresh: dict[str, ActivePolicy] = {}
            failed: dict[str, FailedPolicy] = {}
            for req, ver in self.store.active():
                current = self.policies.get(req.id)
                if current is not None and current.version == ver.version:
                    fresh[req.id] = current
                    continue
                try:
                    fresh[req.id] = load_policy(req.id, ver.version, Path(ver.artifact_dir or ""), ver.spec,
                                                self.model_dir)
                except Exception as exc:
                    failed[req.id] = self._failed(req.id, ver.version, ver.spec, exc)
            self._publish_info(fresh)
            self.policies, self.failed = fresh, failed
            self.generation = generation
            metrics.ACTIVE_POLICIES.set(len(fresh))
            metrics.POLICIES_FAILED.set(len(failed))
            return True

    def _failed(self, policy_id: str, version: int, stored_spec: dict, exc: Exception) -> FailedPolicy:
        error = f"cannot load {policy_id}@{version}: {exc}"
        if policy_id not in self.failed or self.failed[policy_id].error != error:
            log.error("%s; refusing the requests it applies to until it loads", error)
        try:
            scope: Scope | None = from_version_spec(stored_spec)[0].scope
        except Exception:
            scope = None
        try:
            self.store.note_load_error(policy_id, version, error, self.worker)
        except Exception:
            log.exception("cannot record the load error of %s@%d", policy_id, version)
        return FailedPolicy(policy_id, version, scope, error)

    def _publish_info(self, fresh: dict[str, ActivePolicy]) -> None:
        if not self.target_names_in_metrics:
            return
        for gone in self.policies.keys() - fresh.keys():
            with contextlib.suppress(KeyError):
                metrics.POLICY_INFO.remove(gone, self.policies[gone].spec.target)
        for p in fresh.values():
            metrics.POLICY_INFO.labels(p.id, p.spec.target).set(1)

    def active(self) -> list[ActivePolicy]:
        return list(self.policies.values())

    def failed_closed(self) -> list[FailedPolicy]:
        return list(self.failed.values())

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.refresh)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("policy refresh failed")
            await asyncio.sleep(self.interval_s)
