"""Bearer-token auth for the admin API: 401 without a valid token, 403 for a read-only token on a write."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from guard_service.api.errors import APIError
from guard_service.config import Settings

_bearer = HTTPBearer(auto_error=False, description="admin or viewer token (GUARD_ADMIN_TOKENS / GUARD_VIEWER_TOKENS)")


@dataclass(frozen=True)
class Principal:
    name: str
    can_write: bool


def _lookup(token: str, table: dict[str, str]) -> str | None:
    """Compare against every entry (constant time each, no early exit) so timing reveals nothing."""
    found = None
    for name, secret in table.items():
        if hmac.compare_digest(token.encode(), secret.encode()):
            found = name
    return found


def authenticate(settings: Settings, token: str | None) -> Principal | None:
    if not token:
        return None
    admin = _lookup(token, settings.admin_tokens)
    viewer = _lookup(token, settings.viewer_tokens)
    if admin is not None:
        return Principal(admin, True)
    return Principal(viewer, False) if viewer is not None else None


def _principal(request: Request, creds: HTTPAuthorizationCredentials | None) -> Principal:
    settings: Settings = request.app.state.settings
    if creds is None:
        raise APIError(401, "missing bearer token", code="unauthorized")
    principal = authenticate(settings, creds.credentials)
    if principal is None:
        raise APIError(401, "invalid bearer token", code="unauthorized")
    return principal


def reader(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    return _principal(request, creds)


def writer(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    principal = _principal(request, creds)
    if not principal.can_write:
        raise APIError(403, f"token '{principal.name}' is read-only", code="forbidden")
    return principal


Reader = Annotated[Principal, Depends(reader)]
Writer = Annotated[Principal, Depends(writer)]
