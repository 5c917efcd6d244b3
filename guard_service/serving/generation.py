"""Run prompts through the engine and expose one flat stream of per-choice deltas.

Routes render these deltas as SSE chunks or fold them into one response; a cancelled consumer (client
gone) cancels the engine iterators, which makes vLLM abort the requests. Each prompt carries its own sampling
parameters (its own guard decision). An engine error aborts that request (no bookkeeping is left behind) and
becomes a `ServiceError`: 400 for what the engine rejected, 503 for a dead engine, else a logged 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from vllm.exceptions import GracefulHTTPError, VLLMClientError
from vllm.inputs import TokensPrompt
from vllm.sampling_params import SamplingParams
from vllm.v1.engine.exceptions import EngineDeadError

from guard_service.errors import ServiceError

log = logging.getLogger(__name__)


@dataclass
class ChoiceDelta:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, Any]] | None
    finish_reason: str | None
    stop_reason: Any = None  # the stop token or string that ended it (vLLM's), None for EOS or length


@dataclass
class ChoiceResult:
    """A whole choice, accumulated from its deltas."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Any]] | None = None
    finish_reason: str | None = None
    stop_reason: Any = None

    def add(self, delta: ChoiceDelta) -> None:
        self.text += delta.text
        self.token_ids.extend(delta.token_ids)
        if delta.logprobs is not None:
            self.logprobs = (self.logprobs or []) + list(delta.logprobs)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
            self.stop_reason = delta.stop_reason


@dataclass(frozen=True)
class PromptJob:
    """One prompt to generate for: its position in the request (choice index = index * n + k) and params."""

    index: int
    token_ids: list[int]
    params: SamplingParams


def _engine_error(exc: BaseException) -> ServiceError:
    cause = exc.__cause__ or exc
    if isinstance(exc, EngineDeadError):
        return ServiceError(503, "the engine died; this replica is restarting", code="engine_dead")
    if isinstance(cause, GracefulHTTPError):
        return ServiceError(int(cause.http_status), cause.message, code="engine_rejected")
    if isinstance(cause, VLLMClientError | ValueError):
        return ServiceError(400, f"the engine rejected the request: {cause}", code="invalid_request")
    log.error("generation failed", exc_info=exc)
    return ServiceError(500, "generation failed (see the server log)", code="generation_failed")


async def _one_prompt(engine: Any, job: PromptJob, request_id: str) -> AsyncIterator[ChoiceDelta]:
    try:
        async for out in engine.generate(TokensPrompt(prompt_token_ids=job.token_ids), job.params, request_id):
            for o in out.outputs:
                if o.finish_reason in ("abort", "error"):  # never passed off as a normal stop
                    raise ServiceError(503, f"the engine ended the request ({o.finish_reason}); retry",
                                       code="engine_aborted")
                yield ChoiceDelta(index=job.index * job.params.n + o.index, text=o.text,
                                  token_ids=list(o.token_ids), logprobs=o.logprobs, finish_reason=o.finish_reason,
                                  stop_reason=o.stop_reason)
    except (asyncio.CancelledError, GeneratorExit, ServiceError):
        raise
    except Exception as exc:
        if not isinstance(exc, EngineDeadError):
            with contextlib.suppress(Exception):  # a request rejected on its way in may be half-registered
                await engine.abort(request_id)
        raise _engine_error(exc) from exc


async def _merge(streams: list[AsyncIterator[ChoiceDelta]]) -> AsyncIterator[ChoiceDelta]:
    queue: asyncio.Queue[ChoiceDelta | BaseException | None] = asyncio.Queue()

    async def pump(stream: AsyncIterator[ChoiceDelta]) -> None:
        try:
            async for item in stream:
                await queue.put(item)
            await queue.put(None)
        except BaseException as exc:  # forwarded to the consumer, never lost
            await queue.put(exc)
            raise

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def generate(engine: Any, jobs: list[PromptJob], request_id: str) -> AsyncIterator[ChoiceDelta]:
    streams = [_one_prompt(engine, job, f"{request_id}-{job.index}") for job in jobs]
    return streams[0] if len(streams) == 1 else _merge(streams)


async def collect(deltas: AsyncIterator[ChoiceDelta], n_choices: int) -> list[ChoiceResult]:
    results = [ChoiceResult(index=i) for i in range(n_choices)]
    async for delta in deltas:
        results[delta.index].add(delta)
    return results
