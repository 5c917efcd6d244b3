"""Turn OpenAI request inputs into what the engine reads (token ids, via the served model's own tokenizer and
chat template) and what the guard reads about them (every message's text, the prompt's tail).

The guard must see everything the model conditions on: every role (system, developer, user, assistant, tool),
every turn, every prompt of a list, the decoded text of token-id prompts and an assistant prefill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from guard_service.errors import ServiceError

TAIL_TOKENS = 32  # prompt tokens that seed decode-time state: longer than any forbidden sequence


@dataclass(frozen=True)
class Prompt:
    token_ids: list[int]
    segments: list[str]  # the texts the prompt classifier reads, oldest first (one per message)
    tail: str  # the decoded end of the prompt: a forbidden string begun here must not be finished by the output


def _tail(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids[-TAIL_TOKENS:], skip_special_tokens=True)


def chat_token_ids(tokenizer: Any, conversation: list[dict[str, str]], *, add_generation_prompt: bool = True,
                   continue_final_message: bool = False) -> list[int]:
    ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt,
                                        continue_final_message=continue_final_message, tokenize=True)
    if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding here
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def render_chat(tokenizer: Any, messages: list[Any], *, add_generation_prompt: bool = True,
                continue_final_message: bool = False) -> Prompt:
    """`messages`: the request's chat messages (role + text())."""
    conversation = [{"role": m.role if m.role != "developer" else "system", "content": m.text()}
                    for m in messages]
    try:
        ids = chat_token_ids(tokenizer, conversation, add_generation_prompt=add_generation_prompt,
                             continue_final_message=continue_final_message)
    except Exception as exc:  # a template may reject a role order it does not support
        raise ServiceError(400, f"messages cannot be rendered with the model's chat template: {exc}",
                           param="messages", code="invalid_messages") from exc
    return Prompt(ids, [c["content"] for c in conversation if c["content"].strip()], _tail(tokenizer, ids))


def encode_prompts(tokenizer: Any, prompt: str | list[Any], vocab_size: int) -> list[Prompt]:
    """One Prompt per prompt: a string, a list of strings, token ids, or a list of token-id lists. Token ids
    are decoded for the guard: it reads what the model reads, however it was sent."""
    items: list[Any] = [prompt] if isinstance(prompt, str) else prompt
    if all(isinstance(p, int) for p in items):
        items = [list(items)]
    out: list[Prompt] = []
    for p in items:
        if isinstance(p, list):
            bad = next((t for t in p if not 0 <= t < vocab_size), None)
            if bad is not None:
                raise ServiceError(400, f"token id {bad} is outside the vocabulary (size {vocab_size})",
                                   param="prompt", code="invalid_token_id")
            ids, text = list(p), tokenizer.decode(p)
        else:
            ids, text = tokenizer.encode(p, add_special_tokens=False), p
        if not ids:
            raise ServiceError(400, "prompt must not be empty", param="prompt", code="empty_prompt")
        out.append(Prompt(ids, [text] if text.strip() else [], _tail(tokenizer, ids)))
    return out
