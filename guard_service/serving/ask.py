"""Ask the served model questions directly, with no guard: knowledge expansion needs the model's own view."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from vllm.sampling_params import RequestOutputKind, SamplingParams

from guard_service.serving.generation import PromptJob, collect, generate
from guard_service.serving.prompts import chat_token_ids


def engine_asker(engine: Any, max_tokens: int):
    params = SamplingParams(temperature=0, max_tokens=max_tokens, output_kind=RequestOutputKind.FINAL_ONLY)

    async def ask(questions: list[str]) -> list[str]:
        tokenizer = engine.get_tokenizer()

        async def one(q: str) -> str:
            ids = chat_token_ids(tokenizer, [{"role": "user", "content": q}])
            (choice,) = await collect(generate(engine, [PromptJob(0, ids, params)], f"expand-{uuid.uuid4().hex}"), 1)
            return choice.text

        return list(await asyncio.gather(*[one(q) for q in questions]))

    return ask
