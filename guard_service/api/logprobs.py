"""vLLM per-position logprob dicts -> the two OpenAI logprob shapes (chat and legacy completions).

The engine runs with `logprobs_mode="processed_logprobs"` (see engine.py), so these are the logprobs the guard
left: a token it banned has -inf and is never listed; an alternative nobody could sample tells nothing.
"""

from __future__ import annotations

import math
from typing import Any

from guard_service.api.openai_schemas import ChatLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob


def _top(position: dict[int, Any], k: int) -> list[tuple[int, Any]]:
    ranked = sorted(((t, lp) for t, lp in position.items() if math.isfinite(lp.logprob)),
                    key=lambda kv: (kv[1].rank is None, kv[1].rank or 0))
    return ranked[:k]


def _text(lp: Any) -> str:
    return lp.decoded_token or ""


def chat_logprobs(token_ids: list[int], positions: list[dict[int, Any]], k: int) -> ChatLogprobs:
    content = []
    for tok, position in zip(token_ids, positions, strict=False):
        chosen = position[tok]
        content.append(TokenLogprob(
            token=_text(chosen), logprob=chosen.logprob, bytes=list(_text(chosen).encode()),
            top_logprobs=[TopLogprob(token=_text(lp), logprob=lp.logprob, bytes=list(_text(lp).encode()))
                          for _, lp in _top(position, k)]))
    return ChatLogprobs(content=content)


def completion_logprobs(token_ids: list[int], positions: list[dict[int, Any]], k: int,
                        offset: int = 0) -> CompletionLogprobs:
    out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for tok, position in zip(token_ids, positions, strict=False):
        chosen = position[tok]
        out.tokens.append(_text(chosen))
        out.token_logprobs.append(chosen.logprob)
        out.top_logprobs.append({_text(lp): lp.logprob for _, lp in _top(position, k)} if k else None)
        out.text_offset.append(offset)
        offset += len(_text(chosen))
    return out
