"""Admin API (`/admin/v1`): unlearning requests, their versions, revocation, audit and the active set."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from guard_service.api.admin_schemas import (
    Accepted,
    ActivePolicyInfo,
    ProvenanceLookup,
    ProvenanceQuery,
    ProvenanceSpan,
    RequestDetail,
    RequestInfo,
    VersionInfo,
)
from guard_service.api.auth import Reader, Writer
from guard_service.api.deps import HolderDep, SettingsDep
from guard_service.api.errors import APIError
from guard_service.config import Settings
from guard_service.policy.request import Status, UnlearningPatch, UnlearningRequest
from guard_service.runtime.suffix_index import SuffixIndex
from guard_service.store.sqlite import AuditRow, PolicyStore, RequestRow

router = APIRouter(prefix="/admin/v1", tags=["admin"])


def _store(request: Request) -> PolicyStore:
    return request.app.state.store


def check_documents(settings: Settings, spec: UnlearningRequest) -> None:
    """Size and path checks before anything is stored: a rejected request leaves no trace but the 4xx."""
    size = sum(len(d.encode()) for d in spec.protected_documents)
    if size > settings.max_document_bytes:
        raise APIError(413, f"protected documents total {size} bytes; the limit is {settings.max_document_bytes}",
                       param="protected_documents", code="documents_too_large")
    root = settings.path(settings.indexes_dir)
    for p in spec.protected_paths:
        resolved = (root / p).resolve()
        if not resolved.is_relative_to(root) or not resolved.exists():
            raise APIError(422, f"protected path {p!r} must exist under the indexes directory {root}",
                           param="protected_paths", code="invalid_path")


def _info(row: RequestRow) -> RequestInfo:
    return RequestInfo(**row.model_dump(exclude={"spec", "removed_expanded"}))


def _require(store: PolicyStore, request_id: str) -> RequestRow:
    row = store.get(request_id)
    if row is None:
        raise APIError(404, f"no unlearning request {request_id!r}", param="id", code="not_found")
    return row


def submit(store: PolicyStore, settings: Settings, spec: UnlearningRequest, actor: str) -> str:
    check_documents(settings, spec)
    return store.create(spec.model_dump(mode="json"), actor,
                        spec.expires_at.timestamp() if spec.expires_at else None)


@router.post("/unlearning-requests", status_code=202, response_model=Accepted)
async def create_request(body: UnlearningRequest, request: Request, settings: SettingsDep,
                         principal: Writer) -> Accepted:
    request_id = submit(_store(request), settings, body, principal.name)
    request.app.state.scheduler.wake.set()
    return Accepted(id=request_id, version=1, status=Status.pending)


@router.get("/unlearning-requests", response_model=list[RequestInfo])
async def list_requests(request: Request, _: Reader, status: Status | None = None) -> list[RequestInfo]:
    return [_info(r) for r in _store(request).list(status)]


def _version_info(v: Any) -> VersionInfo:
    manifest = v.manifest or {}
    return VersionInfo(version=v.version, status=v.status, error=v.error, created_at=v.created_at,
                       compiled_at=v.compiled_at, compile_stats=manifest.get("stats"),
                       calibration=manifest.get("calibration"), artifact_dir=v.artifact_dir,
                       artifact_bytes={k: f["bytes"] for k, f in manifest.get("files", {}).items()} or None)


@router.get("/unlearning-requests/{request_id}", response_model=RequestDetail)
async def get_request(request_id: str, request: Request, _: Reader) -> RequestDetail:
    store = _store(request)
    row = _require(store, request_id)
    versions = store.versions(request_id)
    shown = next((v for v in versions if v.version == row.active_version), None)
    forbidden = expansion = None
    if shown is not None and shown.artifact_dir and (Path(shown.artifact_dir) / "forbidden.json").is_file():
        data = json.loads((Path(shown.artifact_dir) / "forbidden.json").read_text())
        forbidden, expansion = data["items"], data["expansion"]
    return RequestDetail(**_info(row).model_dump(), spec=row.spec, removed_expanded=row.removed_expanded,
                         versions=[_version_info(v) for v in versions], forbidden=forbidden, expansion=expansion)


@router.patch("/unlearning-requests/{request_id}", status_code=202, response_model=Accepted)
async def patch_request(request_id: str, body: UnlearningPatch, request: Request, settings: SettingsDep,
                        principal: Writer) -> Accepted:
    store = _store(request)
    row = _require(store, request_id)
    changes = body.model_dump(exclude_unset=True, exclude={"remove_expanded"}, mode="json")
    spec = UnlearningRequest.model_validate({**row.spec, **changes})
    check_documents(settings, spec)
    removed = list(dict.fromkeys([*row.removed_expanded, *body.remove_expanded]))
    try:
        version = store.add_version(request_id, spec.model_dump(mode="json"), removed, principal.name,
                                    spec.expires_at.timestamp() if spec.expires_at else None)
    except ValueError as exc:
        raise APIError(409, str(exc), code="not_patchable") from exc
    request.app.state.scheduler.wake.set()
    return Accepted(id=request_id, version=version, status=Status.pending)


@router.delete("/unlearning-requests/{request_id}", response_model=RequestInfo)
async def revoke_request(request_id: str, request: Request, principal: Writer) -> RequestInfo:
    store = _store(request)
    _require(store, request_id)
    store.revoke(request_id, principal.name)
    request.app.state.registry.refresh()
    return _info(_require(store, request_id))


@router.get("/audit", response_model=list[AuditRow])
async def audit(request: Request, _: Reader, request_id: str | None = None,
                limit: Annotated[int, Query(ge=1, le=10000)] = 500) -> list[AuditRow]:
    return _store(request).audit(request_id, limit)


@functools.lru_cache(maxsize=64)
def _suffix_index(path: Path) -> SuffixIndex:
    return SuffixIndex(path)


@router.post("/provenance/lookup", response_model=ProvenanceLookup)
async def provenance_lookup(body: ProvenanceQuery, request: Request, holder: HolderDep,
                            _: Reader) -> ProvenanceLookup:
    """Where does this text come from? Its longest verbatim spans in each protected corpus."""
    tokenizer = holder.require().get_tokenizer()
    ids = tokenizer.encode(body.text, add_special_tokens=False)
    policies = [p for p in request.app.state.registry.active()
                if p.manifest.provenance and (body.policy_id is None or p.id == body.policy_id)]
    if body.policy_id is not None and not policies:
        raise APIError(404, f"no active policy {body.policy_id!r} with protected documents", param="policy_id",
                       code="not_found")
    spans = []
    for policy in policies:
        index = _suffix_index(policy.path / "provenance")
        for start, length, interval in index.longest_spans(ids, body.min_tokens):
            spans.append(ProvenanceSpan(
                policy=policy.key, start_token=start, tokens=length, text=tokenizer.decode(ids[start:start + length]),
                occurrences=interval[1] - interval[0],
                locations=[{"document": o.document, "offset": o.offset} for o in index.locate(interval)]))
    spans.sort(key=lambda s: -s.tokens)
    return ProvenanceLookup(tokens=len(ids), spans=spans)


@router.get("/policies/active", response_model=list[ActivePolicyInfo])
async def active_policies(request: Request, _: Reader) -> list[ActivePolicyInfo]:
    return [ActivePolicyInfo(id=p.id, version=p.version, key=p.key, target=p.spec.target, action=p.action.value,
                             threshold=p.threshold, refuse_threshold=p.refuse_threshold,
                             scope=p.spec.scope.model_dump())
            for p in request.app.state.registry.active()]
