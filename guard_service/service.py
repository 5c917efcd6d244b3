"""What an operator can do to unlearning requests, whoever asks (admin API or CLI): submit, patch, revoke,
recompile, activate a held version. Everything is validated before the store is touched, so a rejected change
leaves no trace but its error. Blocking (store, file system): call off the event loop."""

from __future__ import annotations

from pydantic import ValidationError

from guard_service.compiler.scheduler import over_limit, queue_expansion
from guard_service.config import Settings
from guard_service.errors import ServiceError
from guard_service.policy.request import UnlearningPatch, UnlearningRequest
from guard_service.store.base import PolicyStore, RequestRow, Status

ENDED = (Status.revoked, Status.expired)


def invalid(exc: ValidationError) -> ServiceError:
    """A pydantic error as the same 422 body FastAPI's own validation gives."""
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in exc.errors()]
    first = exc.errors()[0].get("loc", ()) if exc.errors() else ()
    return ServiceError(422, "Invalid request: " + "; ".join(parts), param=".".join(str(p) for p in first) or None,
                        code="invalid_value")


def check(settings: Settings, spec: UnlearningRequest) -> None:
    """Size, path and tenant checks beyond the model's own."""
    size = sum(len(d.encode()) for d in spec.protected_documents)
    if size > settings.max_document_bytes:
        raise ServiceError(413, f"protected documents total {size} bytes; the limit is "
                                f"{settings.max_document_bytes}", param="protected_documents",
                           code="documents_too_large")
    root = settings.path(settings.indexes_dir)
    for p in spec.protected_paths:
        try:
            resolved = (root / p).resolve()
            ok = resolved.is_relative_to(root) and resolved.exists()
        except (OSError, ValueError):  # NUL bytes, names too long for the file system
            ok = False
        if not ok:
            raise ServiceError(422, f"protected path {p!r} must exist under the indexes directory",
                               param="protected_paths", code="invalid_path")
    unknown = [t for t in spec.scope.api_keys if settings.api_keys and t not in settings.api_keys]
    if unknown:
        raise ServiceError(422, f"scope.api_keys names tenants, and {unknown} is not one of GUARD_API_KEYS",
                           param="scope.api_keys", code="unknown_tenant")


def require(store: PolicyStore, request_id: str) -> RequestRow:
    row = store.get(request_id)
    if row is None:
        raise ServiceError(404, f"no unlearning request {request_id!r}", param="id", code="not_found")
    return row


def submit(store: PolicyStore, settings: Settings, spec: UnlearningRequest, actor: str) -> str:
    check(settings, spec)
    return store.create(spec.model_dump(mode="json"), actor, spec.expires_at.timestamp() if spec.expires_at else None)


def patch(store: PolicyStore, settings: Settings, request_id: str, body: UnlearningPatch, actor: str) -> int:
    """A new version with the changed fields, validated exactly as a new request is (422), refused on a
    revoked or expired request (409). The fields are merged into the newest spec while the store holds the
    request locked: a PATCH that raced another (two admins, two replicas) builds on the winner's version, so no
    change is lost."""
    require(store, request_id)
    changes = body.model_dump(exclude_unset=True, exclude={"remove_expanded"}, mode="json")

    def merge(current: dict, removed: list[str]) -> tuple[dict, list[str], float | None]:
        try:
            spec = UnlearningRequest.model_validate({**current, **changes})
        except ValidationError as exc:
            raise invalid(exc) from exc
        check(settings, spec)
        return (spec.model_dump(mode="json"), list(dict.fromkeys([*removed, *body.remove_expanded])),
                spec.expires_at.timestamp() if spec.expires_at else None)

    try:
        return store.patch(request_id, merge, actor)
    except ValueError as exc:  # revoked or expired
        raise ServiceError(409, str(exc), code="not_patchable") from exc


def revoke(store: PolicyStore, request_id: str, actor: str) -> RequestRow:
    require(store, request_id)
    store.revoke(request_id, actor)
    return require(store, request_id)


def recompile(store: PolicyStore, request_id: str, actor: str) -> int:
    row = require(store, request_id)
    if row.status in ENDED:
        raise ServiceError(409, f"request is {row.status.value}; nothing to recompile", code="not_patchable")
    return store.recompile(request_id, actor)


def activate(store: PolicyStore, settings: Settings, request_id: str, version: int, force: bool,
             actor: str) -> RequestRow:
    """Enforce a held version (compiled, kept back by its impact preview). Over GUARD_MAX_COLLATERAL it needs
    `force`: 409 with the prompts it would flag otherwise; a forced activation is audited as such, by name."""
    row = require(store, request_id)
    if row.status in ENDED:
        raise ServiceError(409, f"request is {row.status.value}", code="not_patchable")
    held = store.version(request_id, version)
    if held is None:
        raise ServiceError(404, f"request {request_id!r} has no version {version}", param="version", code="not_found")
    if held.status != Status.held or not held.artifact_dir:
        raise ServiceError(409, f"version {version} is {held.status.value}; only a held version is activated by hand",
                           param="version", code="not_held")
    preview = (held.manifest or {}).get("preview")
    over = over_limit(preview, settings.max_collateral)
    if over is not None and not force:
        raise ServiceError(409, over, param="force", code="collateral_exceeded",
                           extra={"collateral": preview["rate"], "limit": settings.max_collateral,
                                  "collisions": preview.get("top", [])})
    detail = {"forced": over is not None, "collateral": (preview or {}).get("rate"), "limit": settings.max_collateral}
    if not store.activate(request_id, version, held.artifact_dir, held.manifest or {}, actor,
                          "force-activate" if over is not None else "activate", detail):
        raise ServiceError(409, f"a newer version than {version} is active, or the request ended meanwhile",
                           param="version", code="not_held")
    queue_expansion(store, request_id, version, held.spec)  # as after any activation; previewed in its turn
    return require(store, request_id)
