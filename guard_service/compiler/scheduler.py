"""Compile loop run by every API process: claim pending versions from the shared store, compile, activate.

Any replica may compile any request (the store's conditional claim picks one); a crash mid-compile leaves a
stale claim that goes back to pending, and a failed compile leaves the previous version active.

Knowledge expansion asks the model and takes seconds, so it never delays enforcement: a request (or patch) is
compiled and activated from what the operator wrote first, then the compiler queues the next version with
expansion, which replaces it when ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from guard_service.compiler.compile import CompileContext, compile_version, warm_caches, warm_model_caches
from guard_service.metrics import definitions as metrics
from guard_service.policy.artifacts import blobs
from guard_service.policy.request import from_version_spec
from guard_service.store.base import PolicyStore

log = logging.getLogger(__name__)


class Previewer(Protocol):
    """The impact preview (frontend/preview.py), given to the scheduler by the app that runs both."""

    def warm(self) -> None: ...
    def __call__(self, request_id: str, version: int, path: Path, stored_spec: dict) -> dict: ...


def over_limit(preview: dict | None, limit: float | None) -> str | None:
    """Why a version's predicted collateral forbids activating it without `force`, or None."""
    if limit is None or not preview or "rate" not in preview or preview["rate"] <= limit:
        return None
    return (f"predicted collateral {preview['rate']:.1%} of the reference prompts is over the limit of {limit:.1%} "
            "(GUARD_MAX_COLLATERAL); see the version's preview, then activate it with force or narrow the request")


def queue_expansion(store: PolicyStore, request_id: str, version: int, stored_spec: dict) -> bool:
    """After `version` is activated: the next version, with knowledge expansion, if the request wants it, this
    version was compiled without it, and no newer patch is waiting. Whether one was queued."""
    request, removed, expand = from_version_spec(stored_spec)
    if not request.expand_knowledge() or expand:
        return False
    row = store.get(request_id)
    if row is None or row.latest_version != version:
        return False
    with contextlib.suppress(ValueError):  # revoked meanwhile
        store.add_version(request_id, request.model_dump(mode="json"), removed, "compiler", row.expires_at,
                          expand=True, action="expand")
        return True
    return False


class CompileScheduler:
    def __init__(self, store: PolicyStore, context: Callable[[], CompileContext | None], interval_s: float = 0.5,
                 on_compiled: Callable[[str, int, float], None] | None = None,
                 preview: Previewer | None = None, max_collateral: float | None = None, lease_s: float = 30.0,
                 model_dir: Path | None = None):
        """`preview`: each compiled version's impact preview (its predicted collateral, `rate`), recorded on it;
        a version over `max_collateral` is held, not activated. `lease_s`: a compile claim is a lease this
        long, renewed while compiling; one not renewed (its process died) goes back to pending for any
        replica. `model_dir`: the served model, whose tokenizer-free caches load while the engine starts."""
        self.model_dir = model_dir
        self._early: asyncio.Task | None = None
        self.store = store
        self.lease_s = lease_s
        self._swept = 0.0
        self.context = context
        self.interval_s = interval_s
        self.preview = preview
        self.max_collateral = max_collateral
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.wake = asyncio.Event()
        self.on_compiled = on_compiled
        self.warm = False  # its caches loaded: the first compile here would otherwise pay for them

    async def run(self) -> None:
        self._early = asyncio.create_task(self._warm_early(), name="compiler-warm")
        keeper = asyncio.create_task(self._loop(self.housekeeping, "store housekeeping"), name="store-housekeeping")
        try:
            await self._loop(self.tick, "compile scheduler tick", self.wake)
        finally:
            keeper.cancel()
            self._early.cancel()
            await asyncio.gather(keeper, self._early, return_exceptions=True)

    async def _warm_early(self) -> None:
        """What the first compile needs and the engine does not (the model's input embeddings, the negative bank,
        the reference prompts' embeddings for the impact preview), loaded while the engine starts: its
        processes spend that time importing, and the first request after start-up is enforced sooner."""
        try:
            if self.model_dir is not None:
                await asyncio.to_thread(warm_model_caches, self.model_dir)
            if self.preview is not None:
                await asyncio.to_thread(self.preview.warm)
        except Exception:  # the first tick warms again, and raises there if it still cannot
            log.exception("warming the compiler's caches while the engine starts failed")

    async def _loop(self, step: Callable[[], Awaitable[None]], what: str, wake: asyncio.Event | None = None) -> None:
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any one bad step; the error is logged, not hidden
                log.exception("%s failed", what)
            if wake is None:
                await asyncio.sleep(self.interval_s)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.interval_s)
            wake.clear()

    async def housekeeping(self) -> None:
        """Expiry and the lease sweep, beside the compiles: a compile that runs for minutes delays neither.
        Every store call runs off the event loop: a locked store delays them, never requests."""
        expired = await asyncio.to_thread(self.store.expire_due)
        if expired:
            log.info("expired policies: %s", expired)
        if time.monotonic() - self._swept >= self.lease_s / 2:  # leases their holders stopped renewing
            released = await asyncio.to_thread(self.store.release_stale_claims, self.lease_s)
            self._swept = time.monotonic()
            if released:
                log.warning("released %d compile claims whose lease ran out", released)
                self.wake.set()

    async def tick(self) -> None:
        ctx = self.context()
        if ctx is None:  # engine not ready yet: its tokenizer is the compile target
            return
        if not self.warm:
            if self._early is not None:
                await self._early  # not twice at once
            await asyncio.to_thread(warm_caches, ctx)
            if self.preview is not None:
                await asyncio.to_thread(self.preview.warm)  # cached by now, unless the early warm failed
            self.warm = True
        for row in await asyncio.to_thread(self.store.pending):
            if await self._claim(row.request_id, row.version):
                await self.compile_one(ctx, row.request_id, row.version, row.spec)

    async def _claim(self, request_id: str, version: int) -> bool:
        """Claim a pending version. A shutdown that lands while the claim is in flight (committed in its thread,
        not yet seen here) gives it back once it is known to have succeeded: otherwise it would sit claimed by a
        process that is gone until its lease ran out (a SIGTERM'd replica's compile is taken over at once)."""
        claiming = asyncio.ensure_future(asyncio.to_thread(self.store.claim, request_id, version, self.worker))
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            if await claiming:
                await asyncio.to_thread(self.store.release, request_id, version, self.worker)
            raise

    async def _preview(self, request_id: str, version: int, path: str, spec: dict) -> dict | None:
        """The impact preview, or why there is none (a version that cannot even be loaded for it fails closed
        in every process that enforces it; the preview only reports)."""
        if self.preview is None:
            return None
        try:
            return await asyncio.to_thread(self.preview, request_id, version, Path(path), spec)
        except Exception as exc:
            log.exception("impact preview of %s v%d failed", request_id, version)
            return {"error": f"{type(exc).__name__}: {exc}"}

    async def _heartbeat(self, request_id: str, version: int) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                if not await asyncio.to_thread(self.store.renew, request_id, version, self.worker):
                    log.warning("compile lease of %s v%d lost to another replica", request_id, version)
                    return
            except Exception:  # a busy store: try again at the next beat, before the lease runs out
                log.exception("cannot renew the compile lease of %s v%d", request_id, version)

    async def compile_one(self, ctx: CompileContext, request_id: str, version: int, spec: dict) -> None:
        beat = asyncio.create_task(self._heartbeat(request_id, version), name="compile-lease")
        try:
            await self._compile_one(ctx, request_id, version, spec, beat)
        except asyncio.CancelledError:  # shutting down: give the compile back for another process
            await asyncio.shield(asyncio.to_thread(self.store.release, request_id, version, self.worker))
            raise
        finally:
            beat.cancel()

    async def _compile_one(self, ctx: CompileContext, request_id: str, version: int, spec: dict,
                           beat: asyncio.Task) -> None:
        """`beat` (the lease's heartbeat) stops before the outcome is written: a renewal after it would find the
        claim gone and report it lost."""
        began = time.perf_counter()
        try:
            request, removed, expand = from_version_spec(spec)
            manifest = await compile_version(ctx, request_id, version, request, removed, expand)
        except Exception as exc:
            beat.cancel()
            log.exception("compile of %s v%d failed", request_id, version)
            metrics.COMPILE_FAILURES.inc()
            await asyncio.to_thread(self.store.fail, request_id, version, f"{type(exc).__name__}: {exc}")
            return
        path = str(ctx.policies_dir / request_id / f"v{version}")
        # Its files into the store by sha256 first: a replica that enforces it fetches them (no shared volume).
        await asyncio.to_thread(lambda: self.store.put_files(blobs(Path(path))))
        record = manifest.model_dump()
        record["preview"] = await self._preview(request_id, version, path, spec)
        seconds = time.perf_counter() - began
        over = over_limit(record["preview"], self.max_collateral)
        beat.cancel()
        if over is not None and request.mode != "shadow":  # a shadow version enforces nothing: nothing to hold
            await asyncio.to_thread(self.store.hold, request_id, version, path, record, over,
                                    {"collateral": record["preview"]["rate"], "limit": self.max_collateral})
            log.warning("held %s v%d: %s", request_id, version, over)
            return

        def activate() -> bool:  # and reload at once: this process enforces it a moment after the store says so
            done = self.store.activate(request_id, version, path, record)
            if self.on_compiled:
                self.on_compiled(request_id, version, seconds)
            return done

        activated = await asyncio.to_thread(activate)
        log.info("compiled %s v%d in %.2fs", request_id, version, seconds)
        for stage, stage_s in manifest.stats["seconds"].items():
            metrics.COMPILE_SECONDS.labels(stage).observe(stage_s)
        if activated and await asyncio.to_thread(queue_expansion, self.store, request_id, version, spec):
            self.wake.set()
