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
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from guard_service.guards import COMPONENTS
from guard_service.metrics import definitions as metrics
from guard_service.policy.artifacts import PolicyArtifact, fetch
from guard_service.policy.request import Action, Scope, UnlearningRequest, from_version_spec
from guard_service.protocol import PolicyKey
from guard_service.store.base import PolicyStore, VersionRow

log = logging.getLogger(__name__)
STOPPED_KEPT = 10_000  # policies whose stop time a process remembers


@dataclass(frozen=True, eq=False)  # identity equality: parts hold indexes and arrays
class ActivePolicy:
    """One verified policy version this process enforces, with every guard component's part of it."""

    policy_key: PolicyKey
    spec: UnlearningRequest
    artifact: PolicyArtifact
    parts: dict[str, Any]  # component name -> what its `load` returned
    # When this process began enforcing it (Unix time): how long a change took to reach it, without the
    # latency of whoever asks.
    loaded_at: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        return self.policy_key.id

    @property
    def version(self) -> int:
        return self.policy_key.version

    @property
    def key(self) -> str:
        return str(self.policy_key)

    @property
    def action(self) -> Action:
        return self.spec.action

    @property
    def shadow(self) -> bool:
        """Scored on live traffic, enforced nowhere (`mode: shadow`)."""
        return self.spec.mode == "shadow"

    @property
    def threshold(self) -> float:
        return self.artifact.classifier.threshold

    @property
    def refuse_threshold(self) -> float:
        return self.artifact.classifier.refuse_threshold

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
    shadow: bool = False  # a shadow-mode policy enforces nothing, so it cannot fail closed either

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"

    def applies_to(self, model: str, tenant: str | None) -> bool:
        return self.scope is None or in_scope(self.scope, model, tenant)


def load_policy(policy_id: str, version: int, path: Path, stored_spec: dict,
                model_dir: Path | None = None) -> ActivePolicy:
    """Open one version (verified; `model_dir`: the served model, whose tokenizer and config it must match) and
    load every guard component's part of it."""
    artifact = PolicyArtifact.open(path, model_dir)
    spec = from_version_spec(stored_spec)[0]
    return ActivePolicy(PolicyKey(policy_id, version), spec, artifact,
                        {c.name: c.load(artifact, spec) for c in COMPONENTS})


class PolicyRegistry:
    def __init__(self, store: PolicyStore, interval_s: float = 0.5, model_dir: Path | None = None,
                 target_names_in_metrics: bool = False, worker: str = "api",
                 on_new: Callable[[list[str], list[str]], Awaitable[bool]] | None = None,
                 artifacts_root: Path | None = None):
        """`artifacts_root`: this replica's artifact folder (its engine worker's too); a version compiled by
        another replica is fetched into it from the store. None: read each version where it was compiled."""
        self.store = store
        self.artifacts_root = artifacts_root
        # told about versions loaded here it has not taken yet, and every version enforced here (True: taken; the
        # worker preloads the new ones and drops what is no longer enforced)
        self.on_new = on_new
        self._announced: set[str] = set()
        self.interval_s = interval_s
        self.model_dir = model_dir
        self.target_names_in_metrics = target_names_in_metrics
        self.worker = worker
        self.generation = -1
        self.policies: dict[str, ActivePolicy] = {}  # by policy id
        self.failed: dict[str, FailedPolicy] = {}
        # policy id -> (version, Unix time) this process stopped enforcing it (revoked, expired, superseded by
        # nothing): what an operator checks a revocation against on each replica. The newest STOPPED_KEPT only.
        self.stopped: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._lock = threading.Lock()  # one refresh at a time (the poll loop, a revoke, a compile)

    def refresh(self) -> bool:
        """Reload what changed; retry what failed. Blocking (store, files, embedder): call off the loop."""
        with self._lock:
            began = time.perf_counter()
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
                    fresh[req.id] = load_policy(req.id, ver.version, self._local(ver), ver.spec, self.model_dir)
                except Exception as exc:
                    failed[req.id] = self._failed(req.id, ver.version, ver.spec, exc)
            self._publish_info(fresh)
            self._note_stopped(fresh)
            self.policies, self.failed = fresh, failed
            self.generation = generation
            self._warm()
            log.debug("policies reloaded (generation %d) in %.3fs", generation, time.perf_counter() - began)
            metrics.ACTIVE_POLICIES.set(len(fresh))
            metrics.POLICIES_FAILED.set(len(failed))
            return True

    def _warm(self) -> None:
        """Builds the output scanners' shared state (every policy's names, spellings and facts at once) for the
        set a request without a tenant gets (every policy not scoped to other models), here in the reload's
        thread: the first request after a change would otherwise wait for it."""
        unscoped = [p for p in self.active() if not p.spec.scope.models]
        for c in COMPONENTS:
            c.output_scanner([(p.key, p.parts[c.name]) for p in unscoped], "")

    def _note_stopped(self, fresh: dict[str, ActivePolicy]) -> None:
        now = time.time()
        for gone in self.policies.keys() - fresh.keys():
            policy = self.policies[gone]
            expires = policy.spec.expires_at
            self.stopped[gone] = (policy.version, min(now, expires.timestamp()) if expires is not None else now)
            self.stopped.move_to_end(gone)
        for back in fresh.keys() & self.stopped.keys():
            del self.stopped[back]
        while len(self.stopped) > STOPPED_KEPT:
            self.stopped.popitem(last=False)

    def stopped_at(self, policy_id: str) -> tuple[int, float] | None:
        """(version, Unix time) this process stopped enforcing `policy_id`: revoked, or past its `expires_at` (the
        instant it stopped, even before the store marks it expired); None if it is enforced or never was here."""
        policy = self.policies.get(policy_id)
        if policy is not None:
            expires = policy.spec.expires_at
            if expires is not None and expires <= datetime.now(UTC):
                return policy.version, expires.timestamp()
            return None
        return self.stopped.get(policy_id)

    def _local(self, ver: VersionRow) -> Path:
        """The version's folder here, fetched from the store (verified by sha256) if another replica compiled
        it. An existing folder is used as it is: loading verifies every file again."""
        if self.artifacts_root is None:
            return Path(ver.artifact_dir or "")
        return fetch(self.artifacts_root, ver.request_id, ver.version, ver.manifest or {}, self.store.get_file)

    def _failed(self, policy_id: str, version: int, stored_spec: dict, exc: Exception) -> FailedPolicy:
        error = f"cannot load {policy_id}@{version}: {exc}"
        if policy_id not in self.failed or self.failed[policy_id].error != error:
            log.error("%s; refusing the requests it applies to until it loads", error)
        shadow = False
        try:
            spec = from_version_spec(stored_spec)[0]
            scope: Scope | None = spec.scope
            shadow = spec.mode == "shadow"
        except Exception:
            scope = None
        try:
            self.store.note_load_error(policy_id, version, error, self.worker)
        except Exception:
            log.exception("cannot record the load error of %s@%d", policy_id, version)
        return FailedPolicy(policy_id, version, scope, error, shadow)

    def _publish_info(self, fresh: dict[str, ActivePolicy]) -> None:
        if not self.target_names_in_metrics:
            return
        for gone in self.policies.keys() - fresh.keys():
            with contextlib.suppress(KeyError):
                metrics.POLICY_INFO.remove(gone, self.policies[gone].spec.target)
        for p in fresh.values():
            metrics.POLICY_INFO.labels(p.id, p.spec.target).set(1)

    def active(self) -> list[ActivePolicy]:
        """A policy past its `expires_at` stops here at that instant, whatever the store and the compile
        scheduler are doing (the store marks it expired on the scheduler's next tick)."""
        now = datetime.now(UTC)
        return [p for p in self.policies.values() if p.spec.expires_at is None or p.spec.expires_at > now]

    def failed_closed(self) -> list[FailedPolicy]:
        return list(self.failed.values())

    async def run(self) -> None:
        """Reload on every change the store pushes (PostgreSQL's notifications) and, as the fallback, every
        `interval_s`."""
        loop, changed = asyncio.get_running_loop(), asyncio.Event()

        def wake() -> None:  # from the store's listener thread
            with contextlib.suppress(RuntimeError):  # the loop closed: shutting down
                loop.call_soon_threadsafe(changed.set)

        self.store.watch(wake)
        announcing: asyncio.Task | None = None
        try:
            while True:
                changed.clear()
                try:
                    await asyncio.to_thread(self.refresh)
                    # The engine's preload runs beside the next reload, never in front of it: a change
                    # pushed while the worker loads the last one is enforced here at once (it waited ~1 s).
                    if announcing is None or announcing.done():
                        announcing = asyncio.create_task(self._announce(), name="policy-preload")
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("policy refresh failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), self.interval_s)
        finally:
            if announcing is not None:
                announcing.cancel()

    async def _announce(self) -> None:
        active = [p.key for p in self.active()]
        fresh = [k for k in active if k not in self._announced]
        if (not fresh and self._announced <= set(active)) or self.on_new is None:
            return
        try:
            if await self.on_new(fresh, active):
                self._announced = set(active)
        except asyncio.CancelledError:
            raise
        except Exception:  # the worker loads them on first use instead
            log.exception("preloading %s in the engine failed", fresh)
