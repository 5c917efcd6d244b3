"""Response models of the admin API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from guard_service.policy.request import Status


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


class RequestDetail(RequestInfo):
    spec: dict[str, Any]
    removed_expanded: list[str]
    versions: list[VersionInfo]
    forbidden: list[dict[str, Any]] | None = None
    expansion: dict[str, Any] | None = None


class ActivePolicyInfo(BaseModel):
    id: str
    version: int
    key: str
    target: str
    action: str
    threshold: float
    refuse_threshold: float
    scope: dict[str, Any]


class ProvenanceQuery(BaseModel):
    text: str = Field(min_length=1, max_length=1_000_000)
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
