"""Admin API (`/admin/v1`): unlearning requests, their versions, revocation, audit and the active set.

Thin handlers: every store, file and index access runs off the event loop (`run`), and the operations
themselves live in `guard_service.service`, shared with the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request

from guard_service import service
from guard_service.api.admin_schemas import (
    Accepted,
    ActivateBody,
    ActivePolicyInfo,
    AuditEntryOut,
    Enforcement,
    ProvenanceLookup,
    ProvenanceQuery,
    ProvenanceSpan,
    RequestDetail,
    RequestInfo,
    VersionInfo,
)
from guard_service.api.auth import Reader, Writer
from guard_service.api.deps import HolderDep, SettingsDep
from guard_service.errors import ServiceError
from guard_service.guards.suffix_index import SuffixIndex
from guard_service.policy.artifacts import ForbiddenFile, KnowledgeFile, PolicyArtifact, read_manifest
from guard_service.policy.request import UnlearningPatch, UnlearningRequest
from guard_service.store.base import PolicyStore, RequestRow, Status

router = APIRouter(prefix="/admin/v1", tags=["admin"])
T = TypeVar("T")
MAX_SPANS = 200


async def run(fn: Callable[..., T], *args: Any) -> T:
    """Blocking work (SQLite, files, suffix arrays) off the event loop."""
    return await asyncio.to_thread(fn, *args)


def _store(request: Request) -> PolicyStore:
    return request.app.state.store


def _info(row: RequestRow) -> RequestInfo:
    return RequestInfo(**row.model_dump(exclude={"spec", "removed_expanded"}))


@router.post("/unlearning-requests", status_code=202, response_model=Accepted)
async def create_request(body: UnlearningRequest, request: Request, settings: SettingsDep,
                         principal: Writer) -> Accepted:
    request_id = await run(service.submit, _store(request), settings, body, principal.name)
    request.app.state.scheduler.wake.set()
    return Accepted(id=request_id, version=1, status=Status.pending)


@router.get("/unlearning-requests", response_model=list[RequestInfo])
async def list_requests(request: Request, _: Reader, status: Status | None = None) -> list[RequestInfo]:
    return [_info(r) for r in await run(_store(request).list, status)]


def _version_info(v: Any) -> VersionInfo:
    manifest = v.manifest or {}
    return VersionInfo(version=v.version, status=v.status, error=v.error, created_at=v.created_at,
                       compiled_at=v.compiled_at, compile_stats=manifest.get("stats"),
                       calibration=manifest.get("calibration"), artifact_dir=v.artifact_dir,
                       artifact_bytes={k: f["bytes"] for k, f in manifest.get("files", {}).items()} or None,
                       preview=manifest.get("preview"))


def _detail(store: PolicyStore, request_id: str) -> tuple[RequestRow, list[Any], ForbiddenFile | None,
                                                        KnowledgeFile | None]:
    """The request, its versions, and what its active version (else the newest compiled one) forbids and knows
    from its documents."""
    row = service.require(store, request_id)
    versions = store.versions(request_id)
    shown = next((v for v in versions if v.version == row.active_version), None) or next(
        (v for v in reversed(versions) if v.artifact_dir), None)
    forbidden, knowledge = None, None
    if shown is not None and shown.artifact_dir:
        # What the operator reviews; an unreadable artifact shows up in `enforcement` instead.
        with contextlib.suppress(OSError, ValueError):
            artifact = PolicyArtifact(Path(shown.artifact_dir), read_manifest(Path(shown.artifact_dir)))
            forbidden, knowledge = artifact.forbidden, artifact.knowledge
    return row, versions, forbidden, knowledge


def _enforcement(request: Request, request_id: str) -> Enforcement:
    registry = request.app.state.registry
    loaded = next((p for p in registry.active() if p.id == request_id), None)
    if loaded is not None:
        return Enforcement(state="enforced", version=loaded.version, since=loaded.loaded_at)
    failed = next((f for f in registry.failed_closed() if f.id == request_id), None)
    if failed is not None:
        return Enforcement(state="failed_closed", version=failed.version, error=failed.error)
    stopped = registry.stopped_at(request_id)
    if stopped is not None:
        return Enforcement(state="not_enforced", version=stopped[0], since=stopped[1])
    return Enforcement(state="not_enforced")


@router.get("/unlearning-requests/{request_id}", response_model=RequestDetail)
async def get_request(request_id: str, request: Request, _: Reader) -> RequestDetail:
    row, versions, forbidden, knowledge = await run(_detail, _store(request), request_id)
    return RequestDetail(**_info(row).model_dump(), spec=row.spec, removed_expanded=row.removed_expanded,
                         versions=[_version_info(v) for v in versions],
                         forbidden=[i.model_dump() for i in forbidden.items] if forbidden else None,
                         expansion=forbidden.expansion if forbidden else None,
                         crosslingual=[f.model_dump() for f in forbidden.crosslingual] if forbidden else None,
                         knowledge=knowledge.model_dump() if knowledge else None,
                         enforcement=_enforcement(request, request_id))


@router.patch("/unlearning-requests/{request_id}", status_code=202, response_model=Accepted)
async def patch_request(request_id: str, body: UnlearningPatch, request: Request, settings: SettingsDep,
                        principal: Writer) -> Accepted:
    version = await run(service.patch, _store(request), settings, request_id, body, principal.name)
    request.app.state.scheduler.wake.set()
    return Accepted(id=request_id, version=version, status=Status.pending)


@router.post("/unlearning-requests/{request_id}/recompile", status_code=202, response_model=Accepted)
async def recompile_request(request_id: str, request: Request, principal: Writer) -> Accepted:
    """A new version with the same spec, compiled for the model served now (after a model change)."""
    version = await run(service.recompile, _store(request), request_id, principal.name)
    request.app.state.scheduler.wake.set()
    return Accepted(id=request_id, version=version, status=Status.pending)


@router.post("/unlearning-requests/{request_id}/versions/{version}/activate", response_model=RequestInfo)
async def activate_version(request_id: str, version: int, body: ActivateBody, request: Request,
                           settings: SettingsDep, principal: Writer) -> RequestInfo:
    """Enforce a held version: one whose impact preview is over GUARD_MAX_COLLATERAL needs `force` (409 with
    the prompts it would flag otherwise); who forced it is in the audit log."""
    row = await run(service.activate, _store(request), settings, request_id, version, body.force, principal.name)
    await run(request.app.state.registry.refresh)
    request.app.state.scheduler.wake.set()  # its knowledge expansion, if queued
    return _info(row)


@router.delete("/unlearning-requests/{request_id}", response_model=RequestInfo)
async def revoke_request(request_id: str, request: Request, principal: Writer) -> RequestInfo:
    row = await run(service.revoke, _store(request), request_id, principal.name)
    await run(request.app.state.registry.refresh)
    return _info(row)


@router.get("/audit", response_model=list[AuditEntryOut])
async def audit(request: Request, _: Reader, request_id: str | None = None,
                limit: Annotated[int, Query(ge=1, le=10000)] = 500) -> list[AuditEntryOut]:
    return [AuditEntryOut(**row.model_dump()) for row in await run(_store(request).audit, request_id, limit)]


@functools.lru_cache(maxsize=64)
def _suffix_index(path: Path) -> SuffixIndex:
    return SuffixIndex(path)


def _lookup(tokenizer: Any, policies: list[Any], body: ProvenanceQuery) -> ProvenanceLookup:
    ids = tokenizer.encode(body.text, add_special_tokens=False)
    spans = []
    for policy in policies:
        index = _suffix_index(policy.artifact.provenance_path)
        for start, length, interval in index.longest_spans(ids, body.min_tokens):
            spans.append(ProvenanceSpan(
                policy=policy.key, start_token=start, tokens=length, text=tokenizer.decode(ids[start:start + length]),
                occurrences=interval[1] - interval[0],
                locations=[{"document": o.document, "offset": o.offset} for o in index.locate(interval)]))
    spans.sort(key=lambda s: -s.tokens)
    return ProvenanceLookup(tokens=len(ids), spans=spans[:MAX_SPANS], truncated=len(spans) > MAX_SPANS)


@router.post("/provenance/lookup", response_model=ProvenanceLookup)
async def provenance_lookup(body: ProvenanceQuery, request: Request, holder: HolderDep, settings: SettingsDep,
                            _: Reader) -> ProvenanceLookup:
    """Where does this text come from? Its longest verbatim spans in each protected corpus."""
    if len(body.text) > settings.max_lookup_chars:
        raise ServiceError(422, f"text of {len(body.text)} characters; a lookup takes at most "
                                f"{settings.max_lookup_chars}", param="text", code="text_too_long")
    tokenizer = holder.require().get_tokenizer()
    policies = [p for p in request.app.state.registry.active()
                if p.artifact.provenance_path and (body.policy_id is None or p.id == body.policy_id)]
    if body.policy_id is not None and not policies:
        raise ServiceError(404, f"no active policy {body.policy_id!r} with protected documents", param="policy_id",
                           code="not_found")
    return await run(_lookup, tokenizer, policies, body)


@router.get("/policies/active", response_model=list[ActivePolicyInfo])
async def active_policies(request: Request, _: Reader) -> list[ActivePolicyInfo]:
    registry = request.app.state.registry
    return [ActivePolicyInfo(id=p.id, version=p.version, key=p.key, target=p.spec.target, action=p.action.value,
                             threshold=p.threshold, refuse_threshold=p.refuse_threshold,
                             scope=p.spec.scope.model_dump(), state="enforced")
            for p in registry.active()] + [
        ActivePolicyInfo(id=f.id, version=f.version, key=f.key, scope=f.scope.model_dump() if f.scope else None,
                         state="failed_closed", error=f.error) for f in registry.failed_closed()]
