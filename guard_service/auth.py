"""Who is calling: admin and viewer tokens (admin API, guard detail, bypass) and client API keys (tenants).

Every comparison is constant-time against every entry (no early exit), so timing reveals neither which entry
nor how much of a token matched. Only names leave this module: the audit log and metrics never see a secret.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from guard_service.config import Settings

BYPASS_HEADER = "x-guard-bypass"  # an admin token: generate unguarded (audited), see full detail
DETAIL_HEADER = "x-guard-detail"  # an admin or viewer token: see the guard's full detail on this response


@dataclass(frozen=True)
class Principal:
    name: str
    can_write: bool


def _lookup(token: str, table: dict[str, str]) -> str | None:
    found = None
    for name, secret in table.items():
        if hmac.compare_digest(token.encode(), secret.encode()):
            found = name
    return found


def authenticate(settings: Settings, token: str | None) -> Principal | None:
    """An admin (read-write) or viewer (read-only) token's principal, else None."""
    if not token:
        return None
    admin = _lookup(token, settings.admin_tokens)
    viewer = _lookup(token, settings.viewer_tokens)
    if admin is not None:
        return Principal(admin, True)
    return Principal(viewer, False) if viewer is not None else None


def tenant_for_key(settings: Settings, key: str | None) -> str | None:
    """The tenant name of a client API key, else None."""
    return _lookup(key, settings.api_keys) if key else None


def bearer(authorization: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None
