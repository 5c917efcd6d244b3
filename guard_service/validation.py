"""Checks every request model shares: text must be encodable Unicode.

JSON may carry `\\ud800` (an unpaired surrogate); Python decodes it into a str that no tokenizer, database or
UTF-8 writer accepts. Every request model runs `valid_text` over its raw input first, so such input is a 4xx
naming the field, not a 500 deep inside the engine or the store.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_validator


def _walk(value: Any, path: str) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{path or 'body'}: text is not valid Unicode (unpaired surrogate at "
                             f"character {exc.start})") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _walk(key, path)
            _walk(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _walk(item, f"{path}[{i}]")


class ValidText(BaseModel):
    """Base for request models: rejects strings that cannot be encoded as UTF-8, anywhere in the input."""

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        _walk(data, "")
        return data
