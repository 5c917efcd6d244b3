"""Response models of the admin API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from guard_service.store.base import Status
from guard_service.validation import ValidText


class Accepted(BaseModel):
    id: str
    version: int
    status: Status


class VersionInfo(BaseModel):
    version: int
    status: Status
    error: str | None
    created_at: float
    compiled_at: float | None
    compile_stats: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    artifact_dir: str | None = None
    artifact_bytes: dict[str, int] | None = None
    preview: dict[str, Any] | None = Field(
        default=None, description="impact preview: the share of the benign reference prompts this version flags "
        "(`rate`, its predicted collateral), per reference subset, and the prompts it flags, highest score first")


class RequestInfo(BaseModel):
    id: str
    target: str
    status: Status
    active_version: int | None
    latest_version: int
    last_error: str | None
    requested_by: str | None
    created_at: float
    updated_at: float
    expires_at: float | None


class Enforcement(BaseModel):
    """What *this* process does with the request's active version (each replica loads it on its own)."""

    state: Literal["enforced", "failed_closed", "not_enforced"]
    version: int | None = None
    error: str | None = None
    # Unix time this process began enforcing `version`; not_enforced: when it stopped (revoked, expired), if it
    # enforced it at all
    since: float | None = None


class RequestDetail(RequestInfo):
    spec: dict[str, Any]
    removed_expanded: list[str]
    versions: list[VersionInfo]
    forbidden: list[dict[str, Any]] | None = None
    expansion: dict[str, Any] | None = None
    crosslingual: list[dict[str, Any]] | None = Field(
        default=None, description="the compiler's forms of each whole name in other scripts (sound keys); "
        "PATCH remove_expanded with a `form` to stop matching it")
    knowledge: dict[str, Any] | None = Field(
        default=None, description="what the compiler mined from the request's documents (and the served model): "
        "terms, works and fact sentences, each with its origin (document@offset), score and uses, and the "
        "target's roles; PATCH remove_expanded with an item's `text` to drop it from the next version")
    enforcement: Enforcement


class ActivateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: bool = Field(default=False, description="activate even over GUARD_MAX_COLLATERAL (audited)")


class ActivePolicyInfo(BaseModel):
    id: str
    version: int
    key: str
    state: Literal["enforced", "failed_closed"]
    target: str | None = None
    action: str | None = None
    threshold: float | None = None
    refuse_threshold: float | None = None
    scope: dict[str, Any] | None = None
    error: str | None = None


class AuditEntryOut(BaseModel):
    seq: int
    at: float
    actor: str
    action: str
    request_id: str | None
    version: int | None
    detail: dict[str, Any]
    hash: str | None = Field(None, description="SHA-256 chain link (guard-service audit verify)")


class ProvenanceQuery(ValidText):
    text: str = Field(min_length=1, description="at most GUARD_MAX_LOOKUP_CHARS characters")
    policy_id: str | None = None
    min_tokens: int = Field(8, ge=1, le=4096, description="shortest span worth reporting")


class ProvenanceSpan(BaseModel):
    policy: str
    start_token: int
    tokens: int
    text: str
    occurrences: int
    locations: list[dict[str, Any]]


class ProvenanceLookup(BaseModel):
    tokens: int
    spans: list[ProvenanceSpan]
    truncated: bool = False
