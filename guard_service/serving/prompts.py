"""Turn OpenAI request inputs into token ids with the served model's own tokenizer and chat template."""

from __future__ import annotations

from typing import Any

from guard_service.api.errors import APIError
from guard_service.api.openai_schemas import ChatMessage, PromptInput


def chat_token_ids(tokenizer: Any, conversation: list[dict[str, str]]) -> list[int]:
    ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding here
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def render_chat(tokenizer: Any, messages: list[ChatMessage]) -> list[int]:
    conversation = [{"role": m.role if m.role != "developer" else "system", "content": m.text()}
                    for m in messages]
    try:
        return chat_token_ids(tokenizer, conversation)
    except Exception as exc:  # a template may reject a role order it does not support
        raise APIError(400, f"messages cannot be rendered with the model's chat template: {exc}",
                       param="messages", code="invalid_messages") from exc


def encode_prompts(tokenizer: Any, prompt: PromptInput) -> list[list[int]]:
    """One token-id list per prompt: a string, a list of strings, token ids, or a list of token-id lists."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    out: list[list[int]] = []
    for p in prompt:
        ids = list(p) if isinstance(p, list) else tokenizer.encode(p, add_special_tokens=False)
        if not ids:
            raise APIError(400, "prompt must not be empty", param="prompt", code="empty_prompt")
        out.append(ids)
    return out


def check_vocab(prompts: list[list[int]], vocab_size: int) -> None:
    for ids in prompts:
        bad = next((t for t in ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is outside the vocabulary (size {vocab_size})",
                           param="prompt", code="invalid_token_id")
