"""Server-Sent Events framing as the OpenAI SDK reads it: `data: <json>\\n\\n` ... `data: [DONE]\\n\\n`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from guard_service.api.errors import error_body
from guard_service.errors import ServiceError

log = logging.getLogger(__name__)
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
    except ServiceError as exc:  # headers are gone: report in-band, as OpenAI does
        yield event(error_body(exc.status, exc.message, exc.param, exc.code))
    except Exception:  # never the exception's text: it may name paths or policy content
        log.exception("stream failed")
        yield event(error_body(500, "Internal server error while streaming.", code="internal_error"))
    yield DONE


def sse_response(chunks: AsyncIterator[BaseModel], headers: dict[str, str] | None = None) -> StreamingResponse:
    return StreamingResponse(_framed(chunks), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", **(headers or {})})
