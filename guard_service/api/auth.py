"""FastAPI dependencies for who may call what: admin and viewer bearer tokens on the admin API (401 without a
valid one, 403 for a read-only token on a write), client API keys on /v1 (tenants; open when none are
configured), and optionally a token on /metrics and the API docs. Every refusal is counted and audited."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from guard_service.auth import Principal, authenticate, bearer, tenant_for_key
from guard_service.config import Settings
from guard_service.errors import ServiceError
from guard_service.metrics import definitions as metrics

_bearer = HTTPBearer(auto_error=False, description="admin or viewer token (GUARD_ADMIN_TOKENS / GUARD_VIEWER_TOKENS)")


def _refuse(request: Request, surface: str, reason: str, status: int, message: str, code: str) -> ServiceError:
    metrics.AUTH_FAILURES.labels(surface).inc()
    request.app.state.audit.record("anonymous", "auth-failed",
                                   detail={"surface": surface, "reason": reason, "path": request.url.path,
                                           "client": request.client.host if request.client else None})
    return ServiceError(status, message, code=code)


def _principal(request: Request, token: str | None, surface: str) -> Principal:
    settings: Settings = request.app.state.settings
    if token is None:
        raise _refuse(request, surface, "missing", 401, "missing bearer token", "unauthorized")
    principal = authenticate(settings, token)
    if principal is None:
        raise _refuse(request, surface, "invalid", 401, "invalid bearer token", "unauthorized")
    return principal


def reader(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    return _principal(request, creds.credentials if creds else None, "admin")


def writer(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    principal = _principal(request, creds.credentials if creds else None, "admin")
    if not principal.can_write:
        metrics.AUTH_FAILURES.labels("admin-write").inc()
        request.app.state.audit.record(principal.name, "write-refused", detail={"path": request.url.path})
        raise ServiceError(403, f"token '{principal.name}' is read-only", code="forbidden")
    return principal


def client_tenant(request: Request) -> str | None:
    """The calling tenant on /v1: its API key's name. With no GUARD_API_KEYS, /v1 is open and this is None."""
    settings: Settings = request.app.state.settings
    if not settings.api_keys:
        return None
    key = bearer(request.headers.get("authorization"))
    tenant = tenant_for_key(settings, key)
    if tenant is None:
        raise _refuse(request, "v1", "missing" if key is None else "invalid", 401,
                      "You didn't provide an API key." if key is None else "Incorrect API key provided.",
                      "invalid_api_key")
    return tenant


def protected(flag: str):
    """A dependency that asks for an admin or viewer token when `Settings.<flag>` is on (/metrics, docs)."""

    def check(request: Request) -> None:
        if getattr(request.app.state.settings, flag):
            _principal(request, bearer(request.headers.get("authorization")), flag.removesuffix("_auth"))

    return check


Reader = Annotated[Principal, Depends(reader)]
Writer = Annotated[Principal, Depends(writer)]
Tenant = Annotated[str | None, Depends(client_tenant)]
