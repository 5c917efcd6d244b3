"""SQLite policy store (one box), the embedded backend of `store/base.py`'s `PolicyStore`. Every replica and the
CLI open the same file; WAL lets them read while one writes.

Concurrency rules: compiles are claimed with a conditional UPDATE (only one process wins), and a
monotonically increasing `generation` counter tells every API process that the active set changed. Each
thread has its own connection, so reads (the registry's poll) never wait behind a write that waits for the
database lock; a write that cannot get the lock within the busy timeout raises `StoreUnavailable` (503).

The audit log is append-only and hash-chained: each row stores the SHA-256 of the row before it and of
itself (`audit_hash`), triggers make the database refuse UPDATE and DELETE on it, and `verify_audit` walks
the chain (`guard-service audit verify`), so an edit made behind the service's back is detected.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from guard_service.errors import StoreUnavailable
from guard_service.store.base import (
    GENESIS,
    AuditRow,
    Merge,
    RequestRow,
    SharedLogic,
    Status,
    VersionRow,
    audit_hash,
)

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
CREATE TABLE IF NOT EXISTS files (sha256 TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', 0);
"""
APPEND_ONLY = """
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END;
"""
def _statements(script: str) -> list[str]:
    return [f"{stmt.strip()} END;" for stmt in script.split("END;") if stmt.strip()]


def _row(model: type[BaseModel], row: sqlite3.Row) -> Any:
    data = dict(row)
    for key in ("spec", "manifest", "detail", "removed_expanded"):
        if key in data and isinstance(data[key], str):
            data[key] = json.loads(data[key])
    return model.model_validate(data)


def _locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class SqliteStore(SharedLogic):
    def __init__(self, path: Path, busy_timeout_s: float = 10.0):
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        c = self._conn()
        c.executescript(SCHEMA)
        self._migrate(c)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=self.busy_timeout_s)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    def _migrate(self, c: sqlite3.Connection) -> None:
        """Stores made before the audit chain get the hash columns, a chain over their existing rows, and the
        append-only triggers (in that order: the backfill is the last UPDATE the audit table accepts)."""
        columns = {r["name"] for r in c.execute("PRAGMA table_info(audit)")}
        with self._tx() as tx:
            if "hash" not in columns:
                tx.execute("ALTER TABLE audit ADD COLUMN prev_hash TEXT")
                tx.execute("ALTER TABLE audit ADD COLUMN hash TEXT")
            unchained = tx.execute("SELECT * FROM audit WHERE hash IS NULL ORDER BY seq").fetchall()
            if unchained:
                before = tx.execute("SELECT hash FROM audit WHERE seq < ? AND hash IS NOT NULL ORDER BY seq DESC "
                                    "LIMIT 1", (unchained[0]["seq"],)).fetchone()
                prev = before["hash"] if before else GENESIS
                for row in unchained:
                    link = audit_hash(prev, row["seq"], row["at"], row["actor"], row["action"], row["request_id"],
                                      row["version"], row["detail"])
                    tx.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, link, row["seq"]))
                    prev = link
            for stmt in _statements(APPEND_ONLY):  # executescript would commit the open transaction
                tx.execute(stmt)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _locked(exc):
                raise StoreUnavailable() from exc
            raise
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and _locked(exc):
                raise StoreUnavailable() from exc
            raise

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        try:
            return self._conn().execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if _locked(exc):
                raise StoreUnavailable() from exc
            raise

    @staticmethod
    def _audit(c: sqlite3.Connection, actor: str, action: str, request_id: str | None, version: int | None,
               detail: dict[str, Any] | None = None) -> None:
        """Append one row to the chain (inside the caller's write transaction, which serialises appends)."""
        last = c.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last["seq"] + 1, last["hash"]) if last else (1, GENESIS)
        at, body = time.time(), json.dumps(detail or {}, default=str)
        c.execute("INSERT INTO audit (seq, at, actor, action, request_id, version, detail, prev_hash, hash) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (seq, at, actor, action, request_id, version, body, prev,
                   audit_hash(prev, seq, at, actor, action, request_id, version, body)))

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
                    expires_at: float | None, *, expand: bool = False, action: str = "patch",
                    claimed_by: str | None = None) -> int:
        """A new pending version. `expand` marks the compiler's own follow-up version that adds knowledge
        expansion to an already enforced one; `claimed_by` stores it already claimed by that compiler (one
        that compiles it itself, then activates it), so no other process takes it."""
        return self.patch(request_id, lambda _spec, _removed: (spec, removed_expanded, expires_at), actor,
                          expand=expand, action=action, claimed_by=claimed_by)

    def patch(self, request_id: str, merge: Merge, actor: str, *, expand: bool = False, action: str = "patch",
              claimed_by: str | None = None) -> int:
        """A new version from `merge` applied to the newest spec while the request is locked: concurrent
        writers are serialised, so none works from a spec another has replaced (no lost update)."""
        now = time.time()
        with self._tx() as c:  # BEGIN IMMEDIATE: the write lock is held from here
            row = c.execute("SELECT latest_version, status, spec, removed_expanded FROM requests WHERE id = ?",
                            (request_id,)).fetchone()
            if row is None:
                raise KeyError(request_id)
            if row["status"] in (Status.revoked, Status.expired):
                raise ValueError(f"request is {row['status']}; submit a new request instead")
            spec, removed_expanded, expires_at = merge(json.loads(row["spec"]), json.loads(row["removed_expanded"]))
            version = row["latest_version"] + 1
            c.execute("UPDATE requests SET spec = ?, removed_expanded = ?, latest_version = ?, expires_at = ?, "
                      "updated_at = ?, status = CASE WHEN active_version IS NULL THEN ? ELSE status END "
                      "WHERE id = ?", (json.dumps(spec), json.dumps(removed_expanded), version, expires_at, now,
                                       Status.pending, request_id))
            c.execute("INSERT INTO versions (request_id, version, spec, status, claimed_by, claimed_at, created_at) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (request_id, version,
                       json.dumps({**spec, "removed_expanded": removed_expanded, "_expand": expand}),
                       Status.compiling if claimed_by else Status.pending, claimed_by, now if claimed_by else None,
                       now))
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

    def activate(self, request_id: str, version: int, artifact_dir: str, manifest: dict[str, Any],
                 actor: str = "compiler", action: str = "activate", detail: dict[str, Any] | None = None) -> bool:
        """Make `version` the enforced one, unless the request was revoked meanwhile or a newer one is active.
        `actor`, `action`, `detail`: who activated it and how, for the audit log (an admin forcing a held one)."""
        now = time.time()
        with self._tx() as c:
            c.execute("UPDATE versions SET status = ?, artifact_dir = ?, manifest = ?, compiled_at = ? "
                      "WHERE request_id = ? AND version = ?",
                      (Status.active, artifact_dir, json.dumps(manifest), now, request_id, version))
            cur = c.execute("UPDATE requests SET status = ?, active_version = ?, last_error = NULL, updated_at = ? "
                            "WHERE id = ? AND status NOT IN (?, ?) AND (active_version IS NULL OR active_version < ?)",
                            (Status.active, version, now, request_id, Status.revoked, Status.expired, version))
            self._audit(c, actor, action if cur.rowcount else "compiled-not-activated", request_id,
                        version, {"artifact_dir": artifact_dir, **(detail or {})})
            self._bump(c)
            return cur.rowcount == 1

    def hold(self, request_id: str, version: int, artifact_dir: str, manifest: dict[str, Any], reason: str,
             detail: dict[str, Any] | None = None) -> None:
        """Compiled but not activated (its predicted collateral is over the limit): the previous version, if
        any, stays enforced; an admin may activate this one with `force`."""
        now = time.time()
        with self._tx() as c:
            c.execute("UPDATE versions SET status = ?, artifact_dir = ?, manifest = ?, error = ?, compiled_at = ? "
                      "WHERE request_id = ? AND version = ?",
                      (Status.held, artifact_dir, json.dumps(manifest), reason, now, request_id, version))
            c.execute("UPDATE requests SET last_error = ?, updated_at = ?, "
                      "status = CASE WHEN active_version IS NULL AND status NOT IN (?, ?) THEN ? ELSE status END "
                      "WHERE id = ?", (reason, now, Status.revoked, Status.expired, Status.held, request_id))
            self._audit(c, "compiler", "hold", request_id, version, {"reason": reason, **(detail or {})})

    def fail(self, request_id: str, version: int, error: str) -> None:
        now = time.time()
        with self._tx() as c:
            c.execute("UPDATE versions SET status = ?, error = ?, compiled_at = ? WHERE request_id = ? AND version = ?",
                      (Status.failed, error, now, request_id, version))
            c.execute("UPDATE requests SET last_error = ?, updated_at = ?, "
                      "status = CASE WHEN active_version IS NULL AND status NOT IN (?, ?) THEN ? ELSE status END "
                      "WHERE id = ?", (error, now, Status.revoked, Status.expired, Status.failed, request_id))
            self._audit(c, "compiler", "compile-failed", request_id, version, {"error": error})

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

    def put_files(self, blobs: dict[str, bytes]) -> int:
        """Store artifact files by sha256 (the ones already there are skipped); how many were new."""
        with self._tx() as c:
            return sum(c.execute("INSERT OR IGNORE INTO files (sha256, data) VALUES (?, ?)", (sha, data)).rowcount
                       for sha, data in blobs.items())

    def get_file(self, sha256: str) -> bytes | None:
        rows = self._query("SELECT data FROM files WHERE sha256 = ?", (sha256,))
        return bytes(rows[0]["data"]) if rows else None

    def note_load_error(self, request_id: str, version: int, error: str, actor: str) -> bool:
        """An active version that a process cannot load: shown as the request's last error and audited, once
        per distinct error (every poll retries the load; the store is not written every poll)."""
        with self._tx() as c:
            cur = c.execute("UPDATE requests SET last_error = ?, updated_at = ? WHERE id = ? AND "
                            "active_version = ? AND (last_error IS NULL OR last_error != ?)",
                            (error, time.time(), request_id, version, error))
            if cur.rowcount:
                self._audit(c, actor, "load-failed", request_id, version, {"error": error})
            return cur.rowcount == 1

    def release_stale_claims(self, older_than_s: float) -> int:
        """Compile leases not renewed for `older_than_s` (their process died) go back to pending."""
        with self._tx() as c:
            return c.execute("UPDATE versions SET status = ?, claimed_by = NULL WHERE status = ? AND claimed_at < ?",
                             (Status.pending, Status.compiling, time.time() - older_than_s)).rowcount

    def renew(self, request_id: str, version: int, worker: str) -> bool:
        """The compile lease's heartbeat; False once it is no longer `worker`'s (swept and taken over)."""
        with self._tx() as c:
            return c.execute("UPDATE versions SET claimed_at = ? WHERE request_id = ? AND version = ? "
                             "AND status = ? AND claimed_by = ?",
                             (time.time(), request_id, version, Status.compiling, worker)).rowcount == 1

    def release(self, request_id: str, version: int, worker: str) -> bool:
        """Give a compile back (a process shutting down): pending again, for another process to take."""
        with self._tx() as c:
            cur = c.execute("UPDATE versions SET status = ?, claimed_by = NULL, claimed_at = NULL "
                            "WHERE request_id = ? AND version = ? AND status = ? AND claimed_by = ?",
                            (Status.pending, request_id, version, Status.compiling, worker))
            if cur.rowcount:
                self._audit(c, worker, "compile-released", request_id, version)
            return cur.rowcount == 1

    # ---- reads ---------------------------------------------------------------------------------

    def generation(self) -> int:
        return self._query("SELECT value FROM meta WHERE key = 'generation'")[0]["value"]

    def watch(self, on_change: Callable[[], None]) -> None:
        """SQLite cannot tell another process's change: the registry's poll of `generation` finds it."""

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

    def _audit_rows(self) -> Iterable[sqlite3.Row]:
        return self._conn().execute("SELECT * FROM audit ORDER BY seq")

    def audit(self, request_id: str | None = None, limit: int = 500) -> list[AuditRow]:
        if request_id is None:
            rows = self._query("SELECT * FROM audit ORDER BY seq DESC LIMIT ?", (limit,))
        else:
            rows = self._query("SELECT * FROM audit WHERE request_id = ? ORDER BY seq DESC LIMIT ?",
                               (request_id, limit))
        return [_row(AuditRow, r) for r in rows]
