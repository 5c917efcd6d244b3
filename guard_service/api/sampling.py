"""Map the OpenAI sampling fields (and the row's guard args) onto vLLM `SamplingParams`, enforcing the context
window."""

from __future__ import annotations

from typing import Any

from vllm.sampling_params import RequestOutputKind, SamplingParams

from guard_service.api.openai_schemas import ChatCompletionRequest, CompletionRequest
from guard_service.errors import ServiceError
from guard_service.protocol import GuardArgs


def resolve_max_tokens(requested: int | None, prompt_lens: list[int], max_model_len: int,
                       prompt_param: str) -> int:
    longest = max(prompt_lens)
    if longest >= max_model_len:
        raise ServiceError(400, f"This model's maximum context length is {max_model_len} tokens. However, your "
                            f"prompt is {longest} tokens long.", param=prompt_param,
                       code="context_length_exceeded")
    room = max_model_len - longest
    if requested is None:
        return room
    if requested > room:
        raise ServiceError(400, f"This model's maximum context length is {max_model_len} tokens. However, you "
                            f"requested {longest + requested} tokens ({longest} in the prompt, {requested} "
                            f"for the completion).", param="max_tokens", code="context_length_exceeded")
    return requested


def sampling_params(request: ChatCompletionRequest | CompletionRequest, max_tokens: int,
                    guard: GuardArgs | None = None, deltas: bool = False) -> SamplingParams:
    """Streams get per-step deltas, and so does a plain response whose output the guard judges as it grows
    (`deltas`: it can act before the end); any other asks only for the final output, which spares the API
    process one message per token. A guarded row carries its guard args, and the fail-closed marker as a stop
    token, so vLLM names it as the `stop_reason` of a row the worker ended (protocol.py)."""
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    extra_args = guard.to_extra_args() if guard is not None else None
    kwargs: dict[str, Any] = {
        "n": request.n,
        "max_tokens": max_tokens,
        "stop": stop,
        "seed": request.seed,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
        "ignore_eos": request.ignore_eos,
        "logprobs": request.requested_logprobs(),
        "output_kind": RequestOutputKind.DELTA if request.stream or deltas else RequestOutputKind.FINAL_ONLY,
        "extra_args": extra_args,
    }
    if extra_args and guard is not None and guard.marker is not None:
        kwargs["stop_token_ids"] = [guard.marker]
    # Leave vLLM's (and the model's generation_config) defaults in place where the client sent nothing.
    if request.temperature is not None:
        kwargs["temperature"] = request.temperature
    if request.top_p is not None:
        kwargs["top_p"] = request.top_p
    return SamplingParams(**kwargs)
