"""The policy store's contract: what every backend (`sqlite:///…` on one box, `postgresql://…` for replicas on
several machines) stores and answers, as a Protocol
with its row models, and `open_store(url)` to pick one. Everything above the store (service, compiler, registry,
audit sink, API) uses only this.

Rows are the store's own records; the admin API has its own response schemas (api/admin_schemas.py). Every call
blocks (database I/O): callers keep it off the event loop.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from guard_service.config import Settings

Merge = Callable[[dict[str, Any], list[str]], tuple[dict[str, Any], list[str], float | None]]
"""A PATCH's changes applied to the newest spec and removed-expansion list: (spec, removed, expires_at)."""


class Status(StrEnum):
    pending = "pending"
    compiling = "compiling"
    active = "active"
    held = "held"  # compiled, not activated: its predicted collateral is over the limit (force to activate)
    failed = "failed"
    revoked = "revoked"
    expired = "expired"


class RequestRow(BaseModel):
    id: str
    target: str
    status: Status
    spec: dict[str, Any]
    removed_expanded: list[str]
    latest_version: int
    active_version: int | None
    last_error: str | None
    requested_by: str | None
    expires_at: float | None
    created_at: float
    updated_at: float


class VersionRow(BaseModel):
    request_id: str
    version: int
    spec: dict[str, Any]
    status: Status
    error: str | None
    artifact_dir: str | None
    manifest: dict[str, Any] | None
    created_at: float
    compiled_at: float | None


class AuditRow(BaseModel):
    seq: int
    at: float
    actor: str
    action: str
    request_id: str | None
    version: int | None
    detail: dict[str, Any]
    hash: str | None = None


class AuditEntry(BaseModel):
    """One audit row to write."""

    actor: str
    action: str
    request_id: str | None = None
    version: int | None = None
    detail: dict[str, Any] | None = None


class AuditCheck(BaseModel):
    rows: int
    ok: bool
    first_bad_seq: int | None = None
    reason: str | None = None


GENESIS = "0" * 64


def audit_hash(prev_hash: str, seq: int, at: float, actor: str, action: str, request_id: str | None,
               version: int | None, detail: str) -> str:
    """The chain link: this row's fields (detail as stored text) and the previous row's hash."""
    body = json.dumps([seq, at, actor, action, request_id, version, detail], separators=(",", ":"),
                      ensure_ascii=False)
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()




class PolicyStore(Protocol):
    """Requests and their versions, the compile claims, the generation counter every process polls, and the
    append-only audit log. Writes that cannot get the store within its busy timeout raise StoreUnavailable."""

    def close(self) -> None: ...

    # requests and versions
    def create(self, spec: dict[str, Any], actor: str, expires_at: float | None) -> str: ...
    def add_version(self, request_id: str, spec: dict[str, Any], removed_expanded: list[str], actor: str,
                    expires_at: float | None, *, expand: bool = False, action: str = "patch",
                    claimed_by: str | None = None) -> int: ...
    def patch(self, request_id: str, merge: Merge, actor: str) -> int: ...
    def recompile(self, request_id: str, actor: str) -> int: ...
    def revoke(self, request_id: str, actor: str) -> None: ...
    def expire_due(self, now: float | None = None) -> list[str]: ...
    def get(self, request_id: str) -> RequestRow | None: ...
    def list(self, status: Status | None = None) -> list[RequestRow]: ...
    def versions(self, request_id: str) -> list[VersionRow]: ...
    def version(self, request_id: str, version: int) -> VersionRow | None: ...
    def active(self) -> list[tuple[RequestRow, VersionRow]]: ...
    def generation(self) -> int: ...
    def watch(self, on_change: Callable[[], None]) -> None: ...

    # compiling
    def pending(self) -> list[VersionRow]: ...
    def claim(self, request_id: str, version: int, worker: str) -> bool: ...
    def activate(self, request_id: str, version: int, artifact_dir: str, manifest: dict[str, Any],
                 actor: str = "compiler", action: str = "activate", detail: dict[str, Any] | None = None) -> bool: ...
    def hold(self, request_id: str, version: int, artifact_dir: str, manifest: dict[str, Any], reason: str,
             detail: dict[str, Any] | None = None) -> None: ...
    def fail(self, request_id: str, version: int, error: str) -> None: ...
    def release_stale_claims(self, older_than_s: float) -> int: ...
    def renew(self, request_id: str, version: int, worker: str) -> bool: ...
    def release(self, request_id: str, version: int, worker: str) -> bool: ...
    def note_load_error(self, request_id: str, version: int, error: str, actor: str) -> bool: ...

    # artifact files, content-addressed: replicas that did not compile a version fetch it from here
    def put_files(self, blobs: dict[str, bytes]) -> int: ...
    def get_file(self, sha256: str) -> bytes | None: ...

    # audit
    def record(self, actor: str, action: str, request_id: str | None = None, detail: dict | None = None) -> None: ...
    def record_many(self, entries: Iterable[AuditEntry]) -> None: ...
    def audit(self, request_id: str | None = None, limit: int = 500) -> list[AuditRow]: ...
    def verify_audit(self) -> AuditCheck: ...


class SharedLogic:
    """What both backends do the same way on top of their own SQL: a backend provides `_tx()` (a write
    transaction), `_audit(conn, ...)` (append one chained row inside it), `_end(...)`, `get`, `add_version` and
    `_audit_rows()` (every audit row, oldest first)."""

    def revoke(self, request_id: str, actor: str) -> None:
        self._end(request_id, Status.revoked, actor, "revoke")

    def record(self, actor: str, action: str, request_id: str | None = None, detail: dict | None = None) -> None:
        with self._tx() as c:
            self._audit(c, actor, action, request_id, None, detail)

    def record_many(self, entries: Iterable[AuditEntry]) -> None:
        with self._tx() as c:
            for e in entries:
                self._audit(c, e.actor, e.action, e.request_id, e.version, e.detail)

    def recompile(self, request_id: str, actor: str) -> int:
        """A new version with the request's current spec, compiled against the model served now (after a
        model or tokenizer change left the active one unloadable)."""
        row = self.get(request_id)
        if row is None:
            raise KeyError(request_id)
        return self.add_version(request_id, row.spec, row.removed_expanded, actor, row.expires_at,
                                action="recompile")

    def verify_audit(self) -> AuditCheck:
        """Recompute the whole chain; the first row whose stored link does not match is where it was edited."""
        prev, count = GENESIS, 0
        for row in self._audit_rows():
            count += 1
            link = audit_hash(prev, row["seq"], row["at"], row["actor"], row["action"], row["request_id"],
                              row["version"], row["detail"])
            if row["prev_hash"] != prev:
                return AuditCheck(rows=count, ok=False, first_bad_seq=row["seq"],
                                  reason="the row before it was removed or changed")
            if row["hash"] != link:
                return AuditCheck(rows=count, ok=False, first_bad_seq=row["seq"], reason="the row was changed")
            prev = link
        return AuditCheck(rows=count, ok=True)


def open_store(url: str, busy_timeout_s: float = 10.0, base_dir: Path | None = None) -> PolicyStore:
    """The backend named by the URL's scheme. `sqlite:///var/guard.sqlite3` is relative (to `base_dir`, the
    data dir), `sqlite:////srv/guard.sqlite3` absolute, as SQLAlchemy spells them. A new backend is a module
    implementing `PolicyStore` and one branch here."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "sqlite" and rest.startswith("/") and len(rest) > 1:
        from guard_service.store.sqlite import SqliteStore

        path = Path(rest[1:])
        return SqliteStore(path if path.is_absolute() else (base_dir or Path.cwd()) / path, busy_timeout_s)
    if sep and scheme in ("postgresql", "postgres"):
        from guard_service.store.postgres import PostgresStore

        return PostgresStore(url, busy_timeout_s)
    raise ValueError(f"unsupported store URL {scheme + sep if sep else url!r}: expected sqlite:///relative/path, "
                     "sqlite:////absolute/path or postgresql://user@host:port/database")


def open_configured(settings: Settings) -> PolicyStore:
    return open_store(settings.store_url, settings.store_busy_timeout_s, settings.data_dir.resolve())
