"""Run prompts through the engine and expose one flat stream of per-choice deltas.

Routes render these deltas as SSE chunks or fold them into one response; a cancelled consumer (client
gone) cancels the engine iterators, which makes vLLM abort the requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from vllm.inputs import TokensPrompt
from vllm.sampling_params import SamplingParams

_FINISH = {"stop": "stop", "length": "length", "abort": "stop", "error": "stop"}


@dataclass
class ChoiceDelta:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, Any]] | None
    finish_reason: str | None


@dataclass
class ChoiceResult:
    """A whole choice, accumulated from its deltas."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Any]] | None = None
    finish_reason: str | None = None

    def add(self, delta: ChoiceDelta) -> None:
        self.text += delta.text
        self.token_ids.extend(delta.token_ids)
        if delta.logprobs is not None:
            self.logprobs = (self.logprobs or []) + list(delta.logprobs)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason


async def _one_prompt(engine: Any, prompt_index: int, ids: list[int], params: SamplingParams,
                      request_id: str) -> AsyncIterator[ChoiceDelta]:
    async for out in engine.generate(TokensPrompt(prompt_token_ids=ids), params, request_id):
        for o in out.outputs:
            finish = _FINISH.get(o.finish_reason, o.finish_reason) if o.finish_reason else None
            yield ChoiceDelta(index=prompt_index * params.n + o.index, text=o.text,
                              token_ids=list(o.token_ids), logprobs=o.logprobs, finish_reason=finish)


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


def generate(engine: Any, prompts: list[list[int]], params: SamplingParams,
             request_id: str) -> AsyncIterator[ChoiceDelta]:
    streams = [_one_prompt(engine, i, ids, params, f"{request_id}-{i}") for i, ids in enumerate(prompts)]
    return streams[0] if len(streams) == 1 else _merge(streams)


async def collect(deltas: AsyncIterator[ChoiceDelta], n_choices: int) -> list[ChoiceResult]:
    results = [ChoiceResult(index=i) for i in range(n_choices)]
    async for delta in deltas:
        results[delta.index].add(delta)
    return results
