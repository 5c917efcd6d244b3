"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/models.

Request path: render the prompt -> guard check (classify, decide) -> refuse without generating, or generate
(steered rows carry their policies to the engine's logits processor) -> output guard on every delta (leak
scan, block, fail-closed) -> SSE chunks or one JSON body, with a `guard` object and `x-guard-*` headers.
"""

from __future__ import annotations

import time
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
from guard_service.metrics import recorder
from guard_service.runtime.decision import REFUSAL, GuardDecision, Verdict
from guard_service.runtime.guard import BYPASS_HEADER, Guard
from guard_service.runtime.output_guard import CONTENT_FILTER, OutputGuard
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


def _usage(prompts: list[list[int]], completion_tokens: int) -> Usage:
    prompt_tokens = sum(len(p) for p in prompts)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


class _Guarded:
    """The guard's view of one HTTP request: its decision before generation, its output guard during, and
    the metrics it leaves behind."""

    def __init__(self, request: Request, model: str, endpoint: str):
        self.guard: Guard = request.app.state.guard
        self.model, self.api_key, self.endpoint = model, _api_key(request), endpoint
        self.bypass = request.headers.get(BYPASS_HEADER)
        self.started = time.perf_counter()
        self.first_text_at: float | None = None

    async def check(self, turns: list[str]) -> GuardDecision:
        policies = self.guard.applicable(self.model, self.api_key)
        self.decision = await self.guard.check(turns, self.model, policies, self.bypass)
        self.output = OutputGuard(self.decision, policies)
        recorder.decision(self.decision, self.endpoint)
        return self.decision

    def summary(self, output_tokens: int) -> dict:
        """The guard object of the finished response; records the request's outcome metrics once."""
        summary = self.output.summary()
        recorder.outcome(summary, output_tokens)
        ttft = None if self.first_text_at is None else self.first_text_at - self.started
        recorder.latency(self.endpoint, self.decision.verdict is not Verdict.passed,
                         time.perf_counter() - self.started, ttft)
        return summary

    def extra_args(self) -> dict[str, Any] | None:
        return self.decision.extra_args(self.guard.policies_dir, [p.key for p in self.output.scanned])

    def headers(self) -> dict[str, str]:
        return Guard.headers(self.decision)


async def _guarded_deltas(deltas: AsyncIterator[ChoiceDelta], guarded: _Guarded,
                          n_choices: int) -> AsyncIterator[ChoiceDelta]:
    """Deltas after the output guard; stops generating once every choice is blocked (that aborts the engine
    requests)."""
    output = guarded.output
    async for d in deltas:
        if guarded.first_text_at is None and d.token_ids:
            guarded.first_text_at = time.perf_counter()
        text, finish, over = output.on_delta(d.index, d.text, d.token_ids, d.finish_reason)
        if text or finish or not over:
            blocked = finish == CONTENT_FILTER
            yield ChoiceDelta(d.index, text, d.token_ids, None if blocked else d.logprobs, finish)
        if output.all_over(n_choices):
            return


async def _with_guard_trailer(chunks: AsyncIterator[Any], guarded: _Guarded) -> AsyncIterator[Any]:
    """Hold each chunk until the next arrives, so the last one can carry the guard's account (leaks found,
    ban steps), which is complete only once generation is."""
    last = None
    async for chunk in chunks:
        if last is not None:
            yield last
        last = chunk
    if last is not None:
        tokens = sum(c.tokens for c in guarded.output.choices.values())
        yield last.model_copy(update={"guard": guarded.summary(tokens)})


@router.get("/models", response_model=ModelList)
async def list_models(settings: SettingsDep) -> ModelList:
    return ModelList(data=[ModelCard(id=settings.served_model_name, created=now(),
                                     max_model_len=settings.max_model_len)])


# ---- chat ----------------------------------------------------------------------------------------------


@router.post("/chat/completions", response_model=ChatCompletion)
async def chat_completions(body: ChatCompletionRequest, request: Request, settings: SettingsDep,
                           holder: HolderDep) -> Any:
    _check_model(settings, body.model)
    engine = holder.require()
    prompt = render_chat(engine.get_tokenizer(), body.messages)
    max_tokens = resolve_max_tokens(body.requested_max_tokens(), [len(prompt)],
                                    engine.model_config.max_model_len, "messages")
    guarded = _Guarded(request, body.model, "chat")
    decision = await guarded.check([m.text() for m in body.messages if m.role == "user"])
    request_id = new_id("chatcmpl")
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    if decision.verdict is Verdict.refuse:
        refusal = _chat_refusal(request_id, body, [prompt], guarded)
        if body.stream:
            return sse_response(_chat_refusal_chunks(refusal, include_usage), guarded.headers())
        return JSONResponse(refusal.model_dump(mode="json"), headers=guarded.headers())

    params = sampling_params(body, max_tokens, guarded.extra_args())
    deltas = _guarded_deltas(generate(engine, [prompt], params, request_id), guarded, body.n)
    k = body.top_logprobs or 0
    if body.stream:
        return sse_response(_with_guard_trailer(_chat_chunks(deltas, request_id, body, [prompt], include_usage, k),
                                                guarded), guarded.headers())

    choices = await cancel_on_disconnect(request, collect(deltas, body.n))
    response = ChatCompletion(
        id=request_id, created=now(), model=body.model,
        choices=[ChatChoice(index=c.index, message=AssistantMessage(content=c.text), finish_reason=c.finish_reason,
                            logprobs=chat_logprobs(c.token_ids, c.logprobs, k) if c.logprobs is not None else None)
                 for c in choices],
        usage=_usage([prompt], sum(len(c.token_ids) for c in choices)),
        guard=guarded.summary(sum(len(c.token_ids) for c in choices)))
    return JSONResponse(response.model_dump(mode="json"), headers=guarded.headers())


def _chat_refusal(request_id: str, body: ChatCompletionRequest, prompts: list[list[int]],
                  guarded: _Guarded) -> ChatCompletion:
    return ChatCompletion(
        id=request_id, created=now(), model=body.model,
        choices=[ChatChoice(index=i, message=AssistantMessage(content=REFUSAL), finish_reason=CONTENT_FILTER)
                 for i in range(body.n)],
        usage=_usage(prompts, 0), guard=guarded.summary(0))


async def _chat_refusal_chunks(refusal: ChatCompletion, include_usage: bool) -> AsyncIterator[ChatCompletionChunk]:
    for choice in refusal.choices:
        yield ChatCompletionChunk(id=refusal.id, created=refusal.created, model=refusal.model, guard=refusal.guard,
                                  choices=[ChatChunkChoice(index=choice.index, finish_reason=CONTENT_FILTER,
                                                           delta=ChatDelta(role="assistant", content=REFUSAL))])
    if include_usage:
        yield ChatCompletionChunk(id=refusal.id, created=refusal.created, model=refusal.model, choices=[],
                                  usage=refusal.usage)


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


# ---- completions ---------------------------------------------------------------------------------------


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
    guarded = _Guarded(request, body.model, "completions")
    decision = await guarded.check([tokenizer.decode(p) for p in prompts])
    request_id = new_id("cmpl")
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    n_choices = len(prompts) * body.n
    if decision.verdict is Verdict.refuse:
        refusal = Completion(id=request_id, created=now(), model=body.model, usage=_usage(prompts, 0),
                             choices=[CompletionChoice(index=i, text=REFUSAL, finish_reason=CONTENT_FILTER)
                                      for i in range(n_choices)], guard=guarded.summary(0))
        if body.stream:
            usage_chunk = refusal.model_copy(update={"choices": [], "guard": None})
            return sse_response(_items([refusal.model_copy(update={"usage": None})]
                                       + ([usage_chunk] if include_usage else [])), guarded.headers())
        return JSONResponse(refusal.model_dump(mode="json"), headers=guarded.headers())

    params = sampling_params(body, max_tokens, guarded.extra_args())
    deltas = _guarded_deltas(generate(engine, prompts, params, request_id), guarded, n_choices)
    k = body.logprobs or 0
    echoed = [tokenizer.decode(p) if body.echo else "" for p in prompts]
    if body.stream:
        chunks = _completion_chunks(deltas, request_id, body, prompts, echoed, include_usage, k)
        return sse_response(_with_guard_trailer(chunks, guarded), guarded.headers())

    choices = await cancel_on_disconnect(request, collect(deltas, n_choices))
    response = Completion(
        id=request_id, created=now(), model=body.model,
        choices=[CompletionChoice(
            index=c.index, text=echoed[c.index // body.n] + c.text, finish_reason=c.finish_reason,
            logprobs=completion_logprobs(c.token_ids, c.logprobs, k, len(echoed[c.index // body.n]))
            if c.logprobs is not None else None) for c in choices],
        usage=_usage(prompts, sum(len(c.token_ids) for c in choices)),
        guard=guarded.summary(sum(len(c.token_ids) for c in choices)))
    return JSONResponse(response.model_dump(mode="json"), headers=guarded.headers())


async def _items(items: list[Any]) -> AsyncIterator[Any]:
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
