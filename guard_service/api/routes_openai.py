"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

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
from guard_service.runtime.decision import REFUSAL, GuardDecision, Verdict
from guard_service.runtime.guard import BYPASS_HEADER, Guard
from guard_service.serving.generation import ChoiceDelta, collect, generate
from guard_service.serving.logprobs import chat_logprobs, completion_logprobs
from guard_service.serving.prompts import check_vocab, encode_prompts, render_chat
from guard_service.serving.sampling import resolve_max_tokens, sampling_params

router = APIRouter(prefix="/v1", tags=["openai"])


def _check_model(settings: Settings, model: str) -> None:
    if model != settings.served_model_name:
        raise APIError(404, f"The model `{model}` does not exist. Served: `{settings.served_model_name}`.",
                       param="model", code="model_not_found")


def _api_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


async def _guard(request: Request, model: str, turns: list[str]) -> GuardDecision:
    guard: Guard = request.app.state.guard
    return await guard.check(turns, model, _api_key(request), request.headers.get(BYPASS_HEADER))


def _failed_closed(decision: GuardDecision, text: str, token_ids: list[int], finish: str | None) -> bool:
    """A steered row whose policy the worker could not load is forced to end at once (see logits_processor)."""
    return decision.verdict is Verdict.steer and not text and len(token_ids) <= 1 and finish == "stop"


def _json(model: Any, decision: GuardDecision) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), headers=Guard.headers(decision))


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
    decision = await _guard(request, body.model, [m.text() for m in body.messages if m.role == "user"])
    request_id = new_id("chatcmpl")
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    if decision.verdict is Verdict.refuse:
        if body.stream:
            return sse_response(_chat_refusal_chunks(request_id, body, [prompt], include_usage, decision),
                                Guard.headers(decision))
        return _json(_chat_refusal(request_id, body, [prompt], decision), decision)

    params = sampling_params(body, max_tokens, decision.extra_args(request.app.state.guard.policies_dir))
    deltas = generate(engine, [prompt], params, request_id)
    k = body.top_logprobs or 0
    if body.stream:
        return sse_response(_chat_chunks(deltas, request_id, body, [prompt], include_usage, k, decision),
                            Guard.headers(decision))

    choices = await cancel_on_disconnect(request, collect(deltas, body.n))
    if any(_failed_closed(decision, c.text, c.token_ids, c.finish_reason) for c in choices):
        return _json(_chat_refusal(request_id, body, [prompt], decision, failed_closed=True), decision)
    return _json(ChatCompletion(
        id=request_id, created=now(), model=body.model,
        choices=[ChatChoice(index=c.index, message=AssistantMessage(content=c.text),
                            finish_reason=c.finish_reason,
                            logprobs=chat_logprobs(c.token_ids, c.logprobs, k) if c.logprobs is not None else None)
                 for c in choices],
        usage=_usage([prompt], sum(len(c.token_ids) for c in choices)),
        guard=decision.summary(),
    ), decision)


def _chat_refusal(request_id: str, body: ChatCompletionRequest, prompts: list[list[int]], decision: GuardDecision,
                  failed_closed: bool = False) -> ChatCompletion:
    return ChatCompletion(
        id=request_id, created=now(), model=body.model,
        choices=[ChatChoice(index=i, message=AssistantMessage(content=REFUSAL), finish_reason="content_filter")
                 for i in range(body.n)],
        usage=_usage(prompts, 0), guard=decision.summary(failed_closed=failed_closed))


async def _chat_refusal_chunks(request_id: str, body: ChatCompletionRequest, prompts: list[list[int]],
                               include_usage: bool, decision: GuardDecision) -> AsyncIterator[ChatCompletionChunk]:
    full = _chat_refusal(request_id, body, prompts, decision)
    for choice in full.choices:
        yield ChatCompletionChunk(id=request_id, created=full.created, model=body.model, choices=[ChatChunkChoice(
            index=choice.index, delta=ChatDelta(role="assistant", content=REFUSAL), finish_reason="content_filter")],
            guard=full.guard)
    if include_usage:
        yield ChatCompletionChunk(id=request_id, created=full.created, model=body.model, choices=[],
                                  usage=full.usage)


async def _chat_chunks(deltas: AsyncIterator[ChoiceDelta], request_id: str, body: ChatCompletionRequest,
                       prompts: list[list[int]], include_usage: bool, k: int,
                       decision: GuardDecision) -> AsyncIterator[ChatCompletionChunk]:
    created = now()

    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None,
              guard: dict | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=request_id, created=created, model=body.model, choices=choices, usage=usage,
                                   guard=guard)

    yield chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content="")) for i in range(body.n)],
                guard=decision.summary())
    generated = 0
    produced: dict[int, int] = {}
    async for d in deltas:
        generated += len(d.token_ids)
        produced[d.index] = produced.get(d.index, 0) + len(d.token_ids)
        if d.finish_reason and _failed_closed(decision, d.text, [0] * produced[d.index], d.finish_reason):
            yield chunk([ChatChunkChoice(index=d.index, delta=ChatDelta(content=REFUSAL),
                                         finish_reason="content_filter")])
            continue
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
    decision = await _guard(request, body.model, [tokenizer.decode(p) for p in prompts])
    request_id = new_id("cmpl")
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    n_choices = len(prompts) * body.n
    if decision.verdict is Verdict.refuse:
        refusal = Completion(id=request_id, created=now(), model=body.model, usage=_usage(prompts, 0),
                             choices=[CompletionChoice(index=i, text=REFUSAL, finish_reason="content_filter")
                                      for i in range(n_choices)], guard=decision.summary())
        if body.stream:
            return sse_response(_one_shot([refusal.model_copy(update={"usage": None})] + (
                [refusal.model_copy(update={"choices": [], "guard": None})] if include_usage else [])),
                Guard.headers(decision))
        return _json(refusal, decision)

    params = sampling_params(body, max_tokens, decision.extra_args(request.app.state.guard.policies_dir))
    deltas = generate(engine, prompts, params, request_id)
    k = body.logprobs or 0
    echoed = [tokenizer.decode(p) if body.echo else "" for p in prompts]
    if body.stream:
        return sse_response(_completion_chunks(deltas, request_id, body, prompts, echoed, include_usage, k),
                            Guard.headers(decision))

    choices = await cancel_on_disconnect(request, collect(deltas, n_choices))
    for c in choices:
        if _failed_closed(decision, c.text, c.token_ids, c.finish_reason):
            c.text, c.finish_reason, c.logprobs = REFUSAL, "content_filter", None
    return _json(Completion(
        id=request_id, created=now(), model=body.model,
        choices=[CompletionChoice(
            index=c.index, text=echoed[c.index // body.n] + c.text, finish_reason=c.finish_reason,
            logprobs=completion_logprobs(c.token_ids, c.logprobs, k, len(echoed[c.index // body.n]))
            if c.logprobs is not None else None) for c in choices],
        usage=_usage(prompts, sum(len(c.token_ids) for c in choices)),
        guard=decision.summary(),
    ), decision)


async def _one_shot(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


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
