"""OpenAI-style error bodies for every failure: `{"error": {"message", "type", "param", "code"}}`.

The OpenAI API answers a schema violation with 400; the admin API keeps FastAPI's 422, which is what
its clients (and the issue tracker's contract) expect for a semantically invalid unlearning request.
"""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from guard_service.errors import ServiceError

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None,
               extra: dict | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
            **(extra or {}),
        }
    }


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None, extra: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code, extra), status_code=status, headers=headers)


def _describe(exc: RequestValidationError) -> tuple[str, str | None, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return "Request body is not valid JSON.", None, "invalid_json"
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
             for e in errors]
    return "Invalid request: " + "; ".join(parts), param, "invalid_value"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers or None, exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = _describe(exc)
        status = 422 if request.url.path.startswith("/admin/") and code != "invalid_json" else 400
        return error_response(status, message, param, code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        code = "request_too_large" if exc.status_code == 413 else None
        return error_response(exc.status_code, detail, code=code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # The body names an id to find the traceback by, never the exception text (paths, policy content).
        error_id = uuid.uuid4().hex[:12]
        log.exception("unhandled error %s", error_id)
        return error_response(500, f"Internal server error (error id {error_id}).", code="internal_error")
