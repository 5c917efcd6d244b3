"""Run prompts through the engine and expose one flat stream of per-choice deltas.

Each choice is its own engine request (a prompt's `n` choices are `n` requests with `n=1`, seeded as vLLM seeds
its own parallel samples: `seed + k`), so that one choice can be restarted from a prefix of its output under
other sampling parameters (the output guard's switch to steered decoding) without touching its siblings; the
prefix cache makes the shared prompt cheap. Routes render the deltas as SSE chunks or fold them into one
response; a cancelled consumer (client gone) cancels the engine iterators, which makes vLLM abort the requests.
An engine error aborts that request (no bookkeeping is left behind) and becomes a `ServiceError`: 400 for what
the engine rejected, 503 for a dead engine, else a logged 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
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


async def _one_choice(engine: Any, index: int, token_ids: list[int], params: SamplingParams,
                      request_id: str) -> AsyncIterator[ChoiceDelta]:
    try:
        async for out in engine.generate(TokensPrompt(prompt_token_ids=token_ids), params, request_id):
            for o in out.outputs:
                if o.finish_reason in ("abort", "error"):  # never passed off as a normal stop
                    raise ServiceError(503, f"the engine ended the request ({o.finish_reason}); retry",
                                       code="engine_aborted")
                yield ChoiceDelta(index=index, text=o.text, token_ids=list(o.token_ids), logprobs=o.logprobs,
                                  finish_reason=o.finish_reason, stop_reason=o.stop_reason)
    except (asyncio.CancelledError, GeneratorExit, ServiceError):
        raise
    except Exception as exc:
        if not isinstance(exc, EngineDeadError):
            with contextlib.suppress(Exception):  # a request rejected on its way in may be half-registered
                await engine.abort(request_id)
        raise _engine_error(exc) from exc


@dataclass
class _Stream:
    base: list[int]  # the prompt's tokens
    params: SamplingParams
    prompt: list[int] = field(default_factory=list)  # what the current request continues
    max_tokens: int | None = None  # the choice's budget: a restart gets what its kept prefix left
    attempt: int = 0
    task: asyncio.Task | None = None
    live: bool = False  # its current request's end has not been consumed yet


class Generation:
    """The engine requests of one API request, merged into one stream of deltas (async-iterate it once)."""

    def __init__(self, engine: Any, jobs: list[PromptJob], request_id: str):
        self.engine, self.request_id = engine, request_id
        self.streams: dict[int, _Stream] = {}
        for job in jobs:
            for k in range(job.params.n):
                params = job.params.clone()
                params.n = 1
                if params.seed is not None:
                    params.seed += k
                self.streams[job.index * job.params.n + k] = _Stream(list(job.token_ids), params,
                                                                     list(job.token_ids), params.max_tokens)
        self._queue: asyncio.Queue[tuple[int, int, ChoiceDelta | BaseException | None]] = asyncio.Queue()

    def _start(self, index: int) -> None:
        s = self.streams[index]
        rid = f"{self.request_id}-{index}" + (f"-r{s.attempt}" if s.attempt else "")
        source = _one_choice(self.engine, index, s.prompt, s.params, rid)
        attempt = s.attempt

        async def pump() -> None:
            try:
                async for item in source:
                    await self._queue.put((index, attempt, item))
                await self._queue.put((index, attempt, None))
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # forwarded to the consumer, never lost
                await self._queue.put((index, attempt, exc))

        s.task, s.live = asyncio.create_task(pump()), True

    def restart(self, index: int, prefix: list[int], adjust: Callable[[SamplingParams], SamplingParams]) -> None:
        """Abort choice `index` and continue it from its prompt + `prefix` (all of its output that is kept) under
        `adjust(params)`; its deltas from then on continue the kept text."""
        s = self.streams[index]
        if s.task is not None:
            s.task.cancel()  # vLLM aborts the engine request
        s.prompt, s.params = s.base + list(prefix), adjust(s.params.clone())
        if s.max_tokens is not None:
            s.params.max_tokens = max(1, s.max_tokens - len(prefix))
        s.attempt += 1
        self._start(index)

    async def __aiter__(self) -> AsyncIterator[ChoiceDelta]:
        for index in self.streams:
            self._start(index)
        try:
            while any(s.live for s in self.streams.values()):
                index, attempt, item = await self._queue.get()
                if attempt != self.streams[index].attempt:
                    continue  # a restarted choice's earlier request
                if item is None:
                    self.streams[index].live = False
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            tasks = [s.task for s in self.streams.values() if s.task is not None]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def generate(engine: Any, jobs: list[PromptJob], request_id: str) -> Generation:
    return Generation(engine, jobs, request_id)


async def collect(deltas: AsyncIterator[ChoiceDelta], n_choices: int) -> list[ChoiceResult]:
    results = [ChoiceResult(index=i) for i in range(n_choices)]
    async for delta in deltas:
        results[delta.index].add(delta)
    return results
