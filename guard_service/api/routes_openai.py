"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/models.

Request path: authenticate the client (tenant) -> render the prompt(s) -> guard session: one decision per
prompt (classify everything the model conditions on, decide) -> refuse without generating, or generate (steered
rows carry their policies to the engine's logits processor) -> output guard on every delta (held back and judged
before release; a leak refuses the choice or resumes it steered; fail-closed rows) -> SSE chunks or one JSON body,
with a `guard` object and `x-guard-*` headers that tell a plain client only the action and opaque policy ids.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from guard_service.api.auth import Tenant, client_tenant
from guard_service.api.deps import HolderDep, SettingsDep
from guard_service.api.disconnect import cancel_on_disconnect
from guard_service.api.logprobs import chat_logprobs, completion_logprobs
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
from guard_service.api.sampling import resolve_max_tokens, sampling_params
from guard_service.api.sse import sse_response
from guard_service.auth import BYPASS_HEADER, DETAIL_HEADER
from guard_service.config import Settings
from guard_service.errors import ServiceError
from guard_service.frontend.decision import REFUSAL
from guard_service.frontend.output_guard import CONTENT_FILTER
from guard_service.frontend.session import GuardSession
from guard_service.serving.generation import ChoiceDelta, ChoiceResult, PromptJob, collect, generate
from guard_service.serving.prompts import Prompt, encode_prompts, render_chat

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(client_tenant)])


def _check_model(settings: Settings, model: str) -> None:
    if model != settings.served_model_name:
        raise ServiceError(404, f"The model `{model}` does not exist. Served: `{settings.served_model_name}`.",
                           param="model", code="model_not_found")


def _session(request: Request, model: str, tenant: str | None, endpoint: str, n: int,
             stream: bool) -> GuardSession:
    return GuardSession(request.app.state.guard, model=model, tenant=tenant, endpoint=endpoint, n=n, stream=stream,
                        bypass_token=request.headers.get(BYPASS_HEADER),
                        detail_token=request.headers.get(DETAIL_HEADER))


def _usage(prompts: list[Prompt], completion_tokens: int) -> Usage:
    prompt_tokens = sum(len(p.token_ids) for p in prompts)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


def _json(response: BaseModel, session: GuardSession) -> JSONResponse:
    body = response.model_dump(mode="json")
    if body.get("guard") is None:
        body.pop("guard", None)
    return JSONResponse(body, headers=session.headers())


async def _with_guard_trailer(chunks: AsyncIterator[Any], session: GuardSession) -> AsyncIterator[Any]:
    """Hold each chunk until the next arrives, so the last one can carry the guard's account (leaks, the
    end-of-output checks), which is complete only once generation is."""
    last = None
    async for chunk in chunks:
        if last is not None:
            yield last
        last = chunk
    if last is not None:
        tokens = sum(c.tokens for c in session.output.choices.values())
        yield last.model_copy(update={"guard": await session.summary(tokens)})


@router.get("/models", response_model=ModelList)
async def list_models(settings: SettingsDep) -> ModelList:
    return ModelList(data=[ModelCard(id=settings.served_model_name, created=now(),
                                     max_model_len=settings.max_model_len)])


# ---- chat ----------------------------------------------------------------------------------------------


@router.post("/chat/completions", response_model=ChatCompletion)
async def chat_completions(body: ChatCompletionRequest, request: Request, settings: SettingsDep,
                           holder: HolderDep, tenant: Tenant) -> Any:
    _check_model(settings, body.model)
    session = _session(request, body.model, tenant, "chat", body.n, bool(body.stream))
    engine = holder.require()
    prompt = render_chat(engine.get_tokenizer(), body.messages, add_generation_prompt=body.add_generation_prompt,
                         continue_final_message=body.continue_final_message)
    max_tokens = resolve_max_tokens(body.requested_max_tokens(), [len(prompt.token_ids)],
                                    engine.model_config.max_model_len, "messages")
    await session.check([prompt])
    request_id = new_id("chatcmpl")
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    if session.refused(0):
        refusal = ChatCompletion(
            id=request_id, created=now(), model=body.model, usage=_usage([prompt], 0), guard=await session.summary(0),
            choices=[ChatChoice(index=i, message=AssistantMessage(content=REFUSAL), finish_reason=CONTENT_FILTER)
                     for i in range(body.n)])
        if body.stream:
            return sse_response(_chat_refusal_chunks(refusal, include_usage), session.headers())
        return _json(refusal, session)

    params = sampling_params(body, max_tokens, session.guard_args(0), session.output.holds)
    deltas = session.guarded(generate(engine, [PromptJob(0, prompt.token_ids, params)], request_id), body.n)
    k = body.top_logprobs or 0
    if body.stream:
        return sse_response(_with_guard_trailer(_chat_chunks(deltas, request_id, body, [prompt], include_usage, k),
                                                session), session.headers())

    choices = await cancel_on_disconnect(request, collect(deltas, body.n))
    tokens = sum(len(c.token_ids) for c in choices)
    response = ChatCompletion(
        id=request_id, created=now(), model=body.model,
        choices=[ChatChoice(index=c.index, message=AssistantMessage(content=c.text), finish_reason=c.finish_reason,
                            logprobs=chat_logprobs(c.token_ids, c.logprobs, k) if c.logprobs is not None else None)
                 for c in choices],
        usage=_usage([prompt], tokens), guard=await session.summary(tokens))
    return _json(response, session)


async def _chat_refusal_chunks(refusal: ChatCompletion, include_usage: bool) -> AsyncIterator[ChatCompletionChunk]:
    for choice in refusal.choices:
        yield ChatCompletionChunk(id=refusal.id, created=refusal.created, model=refusal.model, guard=refusal.guard,
                                  choices=[ChatChunkChoice(index=choice.index, finish_reason=CONTENT_FILTER,
                                                           delta=ChatDelta(role="assistant", content=REFUSAL))])
    if include_usage:
        yield ChatCompletionChunk(id=refusal.id, created=refusal.created, model=refusal.model, choices=[],
                                  usage=refusal.usage)


async def _chat_chunks(deltas: AsyncIterator[ChoiceDelta], request_id: str, body: ChatCompletionRequest,
                       prompts: list[Prompt], include_usage: bool, k: int) -> AsyncIterator[ChatCompletionChunk]:
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


# ---- completions ---------------------------------------------------------------------------------------


def _check_prompt_count(settings: Settings, body: CompletionRequest) -> None:
    items = body.prompt if isinstance(body.prompt, list) and not isinstance(body.prompt[0], int) else [body.prompt]
    if len(items) > settings.max_prompts:
        raise ServiceError(400, f"{len(items)} prompts in one request; at most {settings.max_prompts}",
                           param="prompt", code="too_many_prompts")
    if len(items) * body.n > settings.max_choices:
        raise ServiceError(400, f"{len(items)} prompts x n={body.n} choices; at most {settings.max_choices}",
                           param="n", code="too_many_choices")


@router.post("/completions", response_model=Completion)
async def completions(body: CompletionRequest, request: Request, settings: SettingsDep,
                      holder: HolderDep, tenant: Tenant) -> Any:
    _check_model(settings, body.model)
    _check_prompt_count(settings, body)
    session = _session(request, body.model, tenant, "completions", body.n, bool(body.stream))
    engine = holder.require()
    tokenizer = engine.get_tokenizer()
    prompts = encode_prompts(tokenizer, body.prompt, engine.model_config.get_vocab_size())
    max_tokens = resolve_max_tokens(body.requested_max_tokens(), [len(p.token_ids) for p in prompts],
                                    engine.model_config.max_model_len, "prompt")
    await session.check(prompts)  # each prompt decided on its own: each choice follows its own prompt
    request_id = new_id("cmpl")
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    n_choices = len(prompts) * body.n
    refused = [i for i in range(n_choices) if session.refused(i // body.n)]
    jobs = [PromptJob(i, p.token_ids, sampling_params(body, max_tokens, session.guard_args(i), session.output.holds))
            for i, p in enumerate(prompts) if not session.refused(i)]
    k = body.logprobs or 0
    echoed = [tokenizer.decode(p.token_ids) if body.echo else "" for p in prompts]
    deltas = session.guarded(generate(engine, jobs, request_id), n_choices - len(refused)) if jobs else None
    if body.stream:
        chunks = _completion_chunks(deltas, refused, request_id, body, prompts, echoed, include_usage, k)
        return sse_response(_with_guard_trailer(chunks, session), session.headers())

    results = await cancel_on_disconnect(request, collect(deltas, n_choices)) if deltas else [
        ChoiceResult(index=i) for i in range(n_choices)]
    for i in refused:
        results[i] = ChoiceResult(index=i, text=REFUSAL, finish_reason=CONTENT_FILTER)
    tokens = sum(len(c.token_ids) for c in results)
    response = Completion(
        id=request_id, created=now(), model=body.model,
        choices=[CompletionChoice(
            index=c.index, text=(echoed[c.index // body.n] if c.index not in refused else "") + c.text,
            finish_reason=c.finish_reason,
            logprobs=completion_logprobs(c.token_ids, c.logprobs, k, len(echoed[c.index // body.n]))
            if c.logprobs is not None else None) for c in results],
        usage=_usage(prompts, tokens), guard=await session.summary(tokens))
    return _json(response, session)


async def _completion_chunks(deltas: AsyncIterator[ChoiceDelta] | None, refused: list[int], request_id: str,
                             body: CompletionRequest, prompts: list[Prompt], echoed: list[str], include_usage: bool,
                             k: int) -> AsyncIterator[Completion]:
    created = now()
    for i in refused:
        yield Completion(id=request_id, created=created, model=body.model, choices=[CompletionChoice(
            index=i, text=REFUSAL, finish_reason=CONTENT_FILTER)])
    generated = 0
    pending_echo = {i for i in range(len(prompts) * body.n) if echoed[i // body.n] and i not in refused}
    async for d in deltas or _nothing():
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


async def _nothing() -> AsyncIterator[ChoiceDelta]:
    return
    yield
