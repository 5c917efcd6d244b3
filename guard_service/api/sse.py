"""Server-Sent Events framing as the OpenAI SDK reads it: `data: <json>\\n\\n` ... `data: [DONE]\\n\\n`."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from guard_service.api.errors import APIError, error_body

DONE = "data: [DONE]\n\n"


def event(payload: BaseModel | dict) -> str:
    body = payload.model_dump_json(exclude_none=True) if isinstance(payload, BaseModel) else _json(payload)
    return f"data: {body}\n\n"


def _json(payload: dict) -> str:
    import json

    return json.dumps(payload, separators=(",", ":"))


async def _framed(chunks: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield event(chunk)
    except APIError as exc:  # headers are gone: report in-band, as OpenAI does
        yield event(error_body(exc.status, exc.message, exc.param, exc.code))
    yield DONE


def sse_response(chunks: AsyncIterator[BaseModel], headers: dict[str, str] | None = None) -> StreamingResponse:
    return StreamingResponse(_framed(chunks), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", **(headers or {})})
