"""Build and own the vLLM `AsyncLLM` engine.

The engine starts in the background so that the HTTP server answers `/health` (503) while the model
loads; every generation route waits on `EngineHolder.require()`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from guard_service.config import Settings
from guard_service.device import has_cuda
from guard_service.protocol import HEAP_TRIM_CONFIG_KEY, PROCESSOR_FQCN, ROOT_CONFIG_KEY, WORKER_EXTENSION

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger(__name__)
CPU_KV_CACHE_BYTES = 1 << 30


def engine_args(settings: Settings, guarded: bool = True) -> Any:
    """`guarded`: with the guard's logits processor and worker extension (benches drive the bare engine too)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    cuda = has_cuda()
    dtype = settings.dtype if settings.dtype != "auto" else ("auto" if cuda else "float32")
    memory = settings.gpu_memory_utilization or 0.9
    kv_bytes = settings.kv_cache_bytes
    if kv_bytes is None and not cuda and settings.gpu_memory_utilization is None:
        kv_bytes = CPU_KV_CACHE_BYTES
    return AsyncEngineArgs(
        model=str(settings.resolved_model_path()),
        served_model_name=[settings.served_model_name],
        dtype=dtype,
        max_model_len=settings.max_model_len,
        max_num_seqs=settings.max_num_seqs,
        gpu_memory_utilization=memory,
        kv_cache_memory_bytes=kv_bytes,
        enforce_eager=settings.enforce_eager,
        tensor_parallel_size=settings.tensor_parallel_size,
        pipeline_parallel_size=settings.pipeline_parallel_size,
        distributed_executor_backend=settings.distributed_executor_backend,
        seed=settings.seed,
        logits_processors=[PROCESSOR_FQCN] if guarded else None,
        worker_extension_cls=WORKER_EXTENSION if guarded else "",
        # the artifact root reaches the worker once, here, not in every request (protocol.py)
        additional_config={ROOT_CONFIG_KEY: str(settings.path(settings.policies_dir)),
                           HEAP_TRIM_CONFIG_KEY: settings.worker_heap_trim_s} if guarded else {},
        # Logprobs after the guard's logits processor (and penalties, temperature): a client never sees the
        # unguarded distribution, in which a banned name would still be the likeliest token.
        logprobs_mode="processed_logprobs",
    )


@dataclass
class EngineHolder:
    """The one engine of this API process, plus what routes need to know about it."""

    settings: Settings
    engine: AsyncLLM | None = None
    error: BaseException | None = None
    started_at: float = field(default_factory=time.time)
    _task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._start(), name="engine-start")

    async def _start(self) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        began = time.monotonic()
        try:
            args = engine_args(self.settings)
            # Construction blocks for tens of seconds (weights, KV cache, compile): keep the loop free.
            self.engine = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
            log.info("engine ready in %.1fs", time.monotonic() - began)
        except BaseException as exc:  # surfaced through /health and every request
            log.exception("engine failed to start")
            self.error = exc

    @property
    def ready(self) -> bool:
        return self.engine is not None and not self.engine.errored

    def require(self) -> AsyncLLM:
        from guard_service.errors import ServiceError

        if self.engine is None:
            reason = f"engine failed to start: {self.error}" if self.error else "engine is starting"
            raise ServiceError(503, reason, code="engine_unavailable")
        if self.engine.errored:
            raise ServiceError(503, f"engine is dead: {self.engine.dead_error}", code="engine_dead")
        return self.engine

    async def watch(self, on_dead: Callable[[BaseException | None], None], interval_s: float = 0.2) -> None:
        """`on_dead` once the engine fails to start or the running engine dies (its worker killed, out of
        memory): this process can no longer serve and must stop so that its supervisor starts a fresh one (or
        shows the crash loop of a setting that can never work)."""
        while self.error is None and (self.engine is None or not self.engine.errored):
            await asyncio.sleep(interval_s)
        if self.error is not None:
            on_dead(self.error)  # logged where it failed
            return
        log.error("the engine died: %s", self.engine.dead_error)
        on_dead(self.engine.dead_error)

    def shutdown(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
