"""SQLite policy store (one box). Every replica and the CLI open the same file; WAL lets them read while one
writes. A server database for several machines would implement the same methods.

Concurrency rules: compiles are claimed with a conditional UPDATE (only one process wins), and a
monotonically increasing `generation` counter tells every API process that the active set changed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from guard_service.policy.request import Status

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    removed_expanded TEXT NOT NULL DEFAULT '[]',
    latest_version INTEGER NOT NULL,
    active_version INTEGER,
    last_error TEXT,
    requested_by TEXT,
    expires_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    request_id TEXT NOT NULL REFERENCES requests(id),
    version INTEGER NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    artifact_dir TEXT,
    manifest TEXT,
    claimed_by TEXT,
    claimed_at REAL,
    created_at REAL NOT NULL,
    compiled_at REAL,
    PRIMARY KEY (request_id, version)
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    request_id TEXT,
    version INTEGER,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', 0);
"""


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


def _row(model: type[BaseModel], row: sqlite3.Row) -> Any:
    data = dict(row)
    for key in ("spec", "manifest", "detail", "removed_expanded"):
        if key in data and isinstance(data[key], str):
            data[key] = json.loads(data[key])
    return model.model_validate(data)


class PolicyStore:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    @staticmethod
    def _audit(c: sqlite3.Connection, actor: str, action: str, request_id: str | None, version: int | None,
               detail: dict[str, Any] | None = None) -> None:
        c.execute("INSERT INTO audit (at, actor, action, request_id, version, detail) VALUES (?, ?, ?, ?, ?, ?)",
                  (time.time(), actor, action, request_id, version, json.dumps(detail or {}, default=str)))

    @staticmethod
    def _bump(c: sqlite3.Connection) -> None:
        c.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")

    # ---- writes --------------------------------------------------------------------------------

    def create(self, spec: dict[str, Any], actor: str, expires_at: float | None) -> str:
        """Store a new request as version 1, pending. Stored before any compile work, so nothing is lost."""
        request_id = f"pol_{uuid.uuid4().hex[:12]}"
        now = time.time()
        body = json.dumps(spec)
        with self._tx() as c:
            c.execute("INSERT INTO requests (id, target, status, spec, latest_version, requested_by, expires_at, "
                      "created_at, updated_at) VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?)",
                      (request_id, spec["target"], Status.pending, body, spec.get("requested_by"), expires_at,
                       now, now))
            c.execute("INSERT INTO versions (request_id, version, spec, status, created_at) VALUES (?, 1, ?, ?, ?)",
                      (request_id, body, Status.pending, now))
            self._audit(c, actor, "create", request_id, 1, {"target": spec["target"], "reason": spec.get("reason")})
        return request_id

    def add_version(self, request_id: str, spec: dict[str, Any], removed_expanded: list[str], actor: str,
                    expires_at: float | None, *, expand: bool = False, action: str = "patch") -> int:
        """A new pending version. `expand` marks the compiler's own follow-up version that adds knowledge
        expansion to an already enforced one."""
        now = time.time()
        with self._tx() as c:
            row = c.execute("SELECT latest_version, status FROM requests WHERE id = ?", (request_id,)).fetchone()
            if row is None:
                raise KeyError(request_id)
            if row["status"] in (Status.revoked, Status.expired):
                raise ValueError(f"request is {row['status']}; submit a new request instead")
            version = row["latest_version"] + 1
            c.execute("UPDATE requests SET spec = ?, removed_expanded = ?, latest_version = ?, expires_at = ?, "
                      "updated_at = ?, status = CASE WHEN active_version IS NULL THEN ? ELSE status END "
                      "WHERE id = ?", (json.dumps(spec), json.dumps(removed_expanded), version, expires_at, now,
                                       Status.pending, request_id))
            c.execute("INSERT INTO versions (request_id, version, spec, status, created_at) VALUES (?, ?, ?, ?, ?)",
                      (request_id, version,
                       json.dumps({**spec, "removed_expanded": removed_expanded, "_expand": expand}),
                       Status.pending, now))
            self._audit(c, actor, action, request_id, version, {"removed_expanded": removed_expanded})
        return version

    def claim(self, request_id: str, version: int, worker: str) -> bool:
        with self._tx() as c:
            cur = c.execute("UPDATE versions SET status = ?, claimed_by = ?, claimed_at = ? "
                            "WHERE request_id = ? AND version = ? AND status = ?",
                            (Status.compiling, worker, time.time(), request_id, version, Status.pending))
            if cur.rowcount != 1:
                return False
            c.execute("UPDATE requests SET status = ? WHERE id = ? AND active_version IS NULL",
                      (Status.compiling, request_id))
            return True

    def activate(self, request_id: str, version: int, artifact_dir: str, manifest: dict[str, Any]) -> bool:
        """Make `version` the enforced one, unless the request was revoked meanwhile or a newer one is active."""
        now = time.time()
        with self._tx() as c:
            c.execute("UPDATE versions SET status = ?, artifact_dir = ?, manifest = ?, compiled_at = ? "
                      "WHERE request_id = ? AND version = ?",
                      (Status.active, artifact_dir, json.dumps(manifest), now, request_id, version))
            cur = c.execute("UPDATE requests SET status = ?, active_version = ?, last_error = NULL, updated_at = ? "
                            "WHERE id = ? AND status NOT IN (?, ?) AND (active_version IS NULL OR active_version < ?)",
                            (Status.active, version, now, request_id, Status.revoked, Status.expired, version))
            self._audit(c, "compiler", "activate" if cur.rowcount else "compiled-not-activated", request_id,
                        version, {"artifact_dir": artifact_dir})
            self._bump(c)
            return cur.rowcount == 1

    def fail(self, request_id: str, version: int, error: str) -> None:
        now = time.time()
        with self._tx() as c:
            c.execute("UPDATE versions SET status = ?, error = ?, compiled_at = ? WHERE request_id = ? AND version = ?",
                      (Status.failed, error, now, request_id, version))
            c.execute("UPDATE requests SET last_error = ?, updated_at = ?, "
                      "status = CASE WHEN active_version IS NULL AND status NOT IN (?, ?) THEN ? ELSE status END "
                      "WHERE id = ?", (error, now, Status.revoked, Status.expired, Status.failed, request_id))
            self._audit(c, "compiler", "compile-failed", request_id, version, {"error": error})

    def revoke(self, request_id: str, actor: str) -> None:
        self._end(request_id, Status.revoked, actor, "revoke")

    def expire_due(self, now: float | None = None) -> list[str]:
        due = [r["id"] for r in self._query(
            "SELECT id FROM requests WHERE expires_at IS NOT NULL AND expires_at <= ? AND status NOT IN (?, ?)",
            (now or time.time(), Status.revoked, Status.expired))]
        for request_id in due:
            self._end(request_id, Status.expired, "scheduler", "expire")
        return due

    def _end(self, request_id: str, status: Status, actor: str, action: str) -> None:
        with self._tx() as c:
            cur = c.execute("UPDATE requests SET status = ?, updated_at = ? WHERE id = ?",
                            (status, time.time(), request_id))
            if cur.rowcount != 1:
                raise KeyError(request_id)
            c.execute("UPDATE versions SET status = ? WHERE request_id = ? AND status IN (?, ?)",
                      (Status.failed, request_id, Status.pending, Status.compiling))
            self._audit(c, actor, action, request_id, None)
            self._bump(c)

    def record(self, actor: str, action: str, request_id: str | None = None, detail: dict | None = None) -> None:
        with self._tx() as c:
            self._audit(c, actor, action, request_id, None, detail)

    def release_stale_claims(self, older_than_s: float) -> int:
        """Compiles claimed by a process that died go back to pending."""
        with self._tx() as c:
            return c.execute("UPDATE versions SET status = ?, claimed_by = NULL WHERE status = ? AND claimed_at < ?",
                             (Status.pending, Status.compiling, time.time() - older_than_s)).rowcount

    # ---- reads ---------------------------------------------------------------------------------

    def generation(self) -> int:
        return self._query("SELECT value FROM meta WHERE key = 'generation'")[0]["value"]

    def get(self, request_id: str) -> RequestRow | None:
        rows = self._query("SELECT * FROM requests WHERE id = ?", (request_id,))
        return _row(RequestRow, rows[0]) if rows else None

    def list(self, status: Status | None = None) -> list[RequestRow]:
        if status is None:
            rows = self._query("SELECT * FROM requests ORDER BY created_at")
        else:
            rows = self._query("SELECT * FROM requests WHERE status = ? ORDER BY created_at", (status,))
        return [_row(RequestRow, r) for r in rows]

    def versions(self, request_id: str) -> list[VersionRow]:
        rows = self._query("SELECT * FROM versions WHERE request_id = ? ORDER BY version", (request_id,))
        return [_row(VersionRow, r) for r in rows]

    def version(self, request_id: str, version: int) -> VersionRow | None:
        rows = self._query("SELECT * FROM versions WHERE request_id = ? AND version = ?", (request_id, version))
        return _row(VersionRow, rows[0]) if rows else None

    def pending(self) -> list[VersionRow]:
        rows = self._query("SELECT * FROM versions WHERE status = ? ORDER BY created_at", (Status.pending,))
        return [_row(VersionRow, r) for r in rows]

    def active(self) -> list[tuple[RequestRow, VersionRow]]:
        rows = self._query("SELECT r.id, r.active_version FROM requests r WHERE r.status = ? "
                           "AND r.active_version IS NOT NULL ORDER BY r.created_at", (Status.active,))
        out = []
        for r in rows:
            req, ver = self.get(r["id"]), self.version(r["id"], r["active_version"])
            if req and ver:
                out.append((req, ver))
        return out

    def audit(self, request_id: str | None = None, limit: int = 500) -> list[AuditRow]:
        if request_id is None:
            rows = self._query("SELECT * FROM audit ORDER BY seq DESC LIMIT ?", (limit,))
        else:
            rows = self._query("SELECT * FROM audit WHERE request_id = ? ORDER BY seq DESC LIMIT ?",
                               (request_id, limit))
        return [_row(AuditRow, r) for r in rows]
