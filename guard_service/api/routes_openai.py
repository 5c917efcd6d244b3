"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from guard_service.api.deps import HolderDep, SettingsDep
from guard_service.api.disconnect import cancel_on_disconnect
from guard_service.api.errors import APIError
from guard_service.api.openai_schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ModelCard,
    ModelList,
    Usage,
    new_id,
    now,
)
from guard_service.api.sse import sse_response
from guard_service.config import Settings
from guard_service.serving.generation import ChoiceDelta, collect, generate
from guard_service.serving.logprobs import chat_logprobs, completion_logprobs
from guard_service.serving.prompts import check_vocab, encode_prompts, render_chat
from guard_service.serving.sampling import resolve_max_tokens, sampling_params

router = APIRouter(prefix="/v1", tags=["openai"])


def _check_model(settings: Settings, model: str) -> None:
    if model != settings.served_model_name:
        raise APIError(404, f"The model `{model}` does not exist. Served: `{settings.served_model_name}`.",
                       param="model", code="model_not_found")


def _usage(prompts: list[list[int]], completion_tokens: int) -> Usage:
    prompt_tokens = sum(len(p) for p in prompts)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


@router.get("/models", response_model=ModelList)
async def list_models(settings: SettingsDep) -> ModelList:
    return ModelList(data=[ModelCard(id=settings.served_model_name, created=now(),
                                     max_model_len=settings.max_model_len)])


@router.post("/chat/completions", response_model=ChatCompletion)
async def chat_completions(body: ChatCompletionRequest, request: Request, settings: SettingsDep,
                           holder: HolderDep) -> Any:
    _check_model(settings, body.model)
    engine = holder.require()
    prompt = render_chat(engine.get_tokenizer(), body.messages)
    max_tokens = resolve_max_tokens(body.requested_max_tokens(), [len(prompt)],
                                    engine.model_config.max_model_len, "messages")
    params = sampling_params(body, max_tokens)
    request_id = new_id("chatcmpl")
    deltas = generate(engine, [prompt], params, request_id)
    k = body.top_logprobs or 0
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(_chat_chunks(deltas, request_id, body, [prompt], include_usage, k))

    choices = await cancel_on_disconnect(request, collect(deltas, body.n))
    return ChatCompletion(
        id=request_id, created=now(), model=body.model,
        choices=[ChatChoice(index=c.index, message=AssistantMessage(content=c.text),
                            finish_reason=c.finish_reason,
                            logprobs=chat_logprobs(c.token_ids, c.logprobs, k) if c.logprobs is not None else None)
                 for c in choices],
        usage=_usage([prompt], sum(len(c.token_ids) for c in choices)),
    )


async def _chat_chunks(deltas: AsyncIterator[ChoiceDelta], request_id: str, body: ChatCompletionRequest,
                       prompts: list[list[int]], include_usage: bool, k: int) -> AsyncIterator[ChatCompletionChunk]:
    created = now()

    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=request_id, created=created, model=body.model, choices=choices, usage=usage)

    yield chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content="")) for i in range(body.n)])
    generated = 0
    async for d in deltas:
        generated += len(d.token_ids)
        if not d.text and d.finish_reason is None:
            continue
        yield chunk([ChatChunkChoice(
            index=d.index, delta=ChatDelta(content=d.text), finish_reason=d.finish_reason,
            logprobs=chat_logprobs(d.token_ids, d.logprobs, k) if d.logprobs is not None else None)])
    if include_usage:
        yield chunk([], _usage(prompts, generated))


@router.post("/completions", response_model=Completion)
async def completions(body: CompletionRequest, request: Request, settings: SettingsDep,
                      holder: HolderDep) -> Any:
    _check_model(settings, body.model)
    engine = holder.require()
    tokenizer = engine.get_tokenizer()
    prompts = encode_prompts(tokenizer, body.prompt)
    check_vocab(prompts, engine.model_config.get_vocab_size())
    max_tokens = resolve_max_tokens(body.requested_max_tokens(), [len(p) for p in prompts],
                                    engine.model_config.max_model_len, "prompt")
    params = sampling_params(body, max_tokens)
    request_id = new_id("cmpl")
    deltas = generate(engine, prompts, params, request_id)
    k = body.logprobs or 0
    echoed = [tokenizer.decode(p) if body.echo else "" for p in prompts]
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(_completion_chunks(deltas, request_id, body, prompts, echoed, include_usage, k))

    choices = await cancel_on_disconnect(request, collect(deltas, len(prompts) * body.n))
    return Completion(
        id=request_id, created=now(), model=body.model,
        choices=[CompletionChoice(
            index=c.index, text=echoed[c.index // body.n] + c.text, finish_reason=c.finish_reason,
            logprobs=completion_logprobs(c.token_ids, c.logprobs, k, len(echoed[c.index // body.n]))
            if c.logprobs is not None else None) for c in choices],
        usage=_usage(prompts, sum(len(c.token_ids) for c in choices)),
    )


async def _completion_chunks(deltas: AsyncIterator[ChoiceDelta], request_id: str, body: CompletionRequest,
                             prompts: list[list[int]], echoed: list[str], include_usage: bool,
                             k: int) -> AsyncIterator[Completion]:
    created = now()
    generated = 0
    pending_echo = {i for i in range(len(prompts) * body.n) if echoed[i // body.n]}
    async for d in deltas:
        generated += len(d.token_ids)
        prefix = echoed[d.index // body.n] if d.index in pending_echo else ""
        pending_echo.discard(d.index)
        if not d.text and d.finish_reason is None and not prefix:
            continue
        yield Completion(id=request_id, created=created, model=body.model, choices=[CompletionChoice(
            index=d.index, text=prefix + d.text, finish_reason=d.finish_reason,
            logprobs=completion_logprobs(d.token_ids, d.logprobs, k) if d.logprobs is not None else None)])
    if include_usage:
        yield Completion(id=request_id, created=created, model=body.model, choices=[],
                         usage=_usage(prompts, generated))
