"""PostgreSQL policy store (replicas on several machines), the server backend of `store/base.py`'s `PolicyStore`,
chosen by `GUARD_STORE_URL=postgresql://…`. psycopg 3 with a connection pool.

- **Migrations** are numbered (`MIGRATIONS`), recorded in `schema_migrations` and applied at start inside one
  transaction holding an advisory lock, so replicas starting together migrate once.
- **Columns**: `jsonb` specs and manifests, `timestamptz` times (read back as epoch seconds through the
  `*_epoch` views, the row models' unit). Audit rows keep the exact float time and detail text their hash was
  computed over, plus generated `timestamptz` / `jsonb` twins for queries.
- **Concurrency**: a new version locks its request row (`SELECT … FOR UPDATE`), so concurrent patches get
  consecutive numbers and none is lost; a compile is claimed by a conditional UPDATE (one replica wins);
  audit appends serialise on a transaction advisory lock, which keeps the hash chain one chain.
- **Push**: every change to the active set bumps `meta.generation` and sends `NOTIFY guard_policies` in the
  same transaction; `watch` hands each notification to the registry, which reloads at once (polling stays as
  the fallback).
- **Append-only audit**: triggers refuse UPDATE, DELETE and TRUNCATE on `audit`, whatever the role.
- **Artifacts**: every compiled file is kept by sha256 (`artifact_files`), so a replica fetches a version it
  did not compile (policy/artifacts.py `fetch`) and no file system is shared.
- A lock or a connection that cannot be had within the busy timeout raises `StoreUnavailable` (503).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout
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

log = logging.getLogger(__name__)
CHANNEL = "guard_policies"
MIGRATE_LOCK = 0x67756172  # advisory lock keys ("guar", "audi")
AUDIT_LOCK = 0x61756469

MIGRATIONS = [
    # 1: the schema the SQLite store has, in PostgreSQL's types
    """
    CREATE TABLE requests (
        id text PRIMARY KEY,
        target text NOT NULL,
        status text NOT NULL,
        spec jsonb NOT NULL,
        removed_expanded jsonb NOT NULL DEFAULT '[]',
        latest_version integer NOT NULL,
        active_version integer,
        last_error text,
        requested_by text,
        expires_at timestamptz,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL
    );
    CREATE INDEX requests_status ON requests (status);
    CREATE TABLE versions (
        request_id text NOT NULL REFERENCES requests (id),
        version integer NOT NULL,
        spec jsonb NOT NULL,
        status text NOT NULL,
        error text,
        artifact_dir text,
        manifest jsonb,
        claimed_by text,
        claimed_at timestamptz,
        created_at timestamptz NOT NULL,
        compiled_at timestamptz,
        PRIMARY KEY (request_id, version)
    );
    CREATE INDEX versions_status ON versions (status);
    CREATE TABLE audit (
        seq bigint PRIMARY KEY,
        at double precision NOT NULL,
        actor text NOT NULL,
        action text NOT NULL,
        request_id text,
        version integer,
        detail text NOT NULL,
        prev_hash text NOT NULL,
        hash text NOT NULL,
        at_time timestamptz GENERATED ALWAYS AS (to_timestamp(at)) STORED,
        detail_json jsonb GENERATED ALWAYS AS (detail::jsonb) STORED
    );
    CREATE INDEX audit_request ON audit (request_id, seq);
    CREATE TABLE meta (key text PRIMARY KEY, value bigint NOT NULL);
    INSERT INTO meta (key, value) VALUES ('generation', 0);
    CREATE FUNCTION guard_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'audit rows are append-only'; END $$;
    CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
        FOR EACH ROW EXECUTE FUNCTION guard_audit_append_only();
    CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
        FOR EACH STATEMENT EXECUTE FUNCTION guard_audit_append_only();
    CREATE VIEW requests_epoch AS SELECT id, target, status, spec, removed_expanded, latest_version, active_version,
        last_error, requested_by, extract(epoch FROM expires_at)::float8 AS expires_at,
        extract(epoch FROM created_at)::float8 AS created_at, extract(epoch FROM updated_at)::float8 AS updated_at
        FROM requests;
    CREATE VIEW versions_epoch AS SELECT request_id, version, spec, status, error, artifact_dir, manifest,
        claimed_by, extract(epoch FROM claimed_at)::float8 AS claimed_at,
        extract(epoch FROM created_at)::float8 AS created_at, extract(epoch FROM compiled_at)::float8 AS compiled_at
        FROM versions;
    """,
    # 2: artifact files by sha256, so that replicas need no shared file system
    """
    CREATE TABLE artifact_files (sha256 text PRIMARY KEY, data bytea NOT NULL, bytes bigint NOT NULL,
        stored_at timestamptz NOT NULL DEFAULT now());
    """,
]


def _row(model: type[BaseModel], row: dict[str, Any]) -> Any:
    if isinstance(row.get("detail"), str):
        row = {**row, "detail": json.loads(row["detail"])}
    return model.model_validate(row)


class PostgresStore(SharedLogic):
    def __init__(self, url: str, busy_timeout_s: float = 10.0, max_connections: int = 8):
        self.url = url
        self.busy_timeout_s = busy_timeout_s
        ms = max(1, int(busy_timeout_s * 1000))
        self.pool = ConnectionPool(
            url, min_size=1, max_size=max_connections, timeout=busy_timeout_s, open=False, name="guard-store",
            kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": max(1, int(busy_timeout_s)),
                    "options": f"-c lock_timeout={ms} -c statement_timeout={ms * 6}"})
        try:
            self.pool.open(wait=True, timeout=busy_timeout_s)
        except PoolTimeout as exc:
            self.pool.close()
            raise StoreUnavailable(f"the policy store at {_safe(url)} is unreachable") from exc
        self._listeners: list[threading.Thread] = []
        self._closed = threading.Event()
        self._migrate()

    # ---- plumbing ------------------------------------------------------------------------------

    def close(self) -> None:
        self._closed.set()
        self.pool.close()

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection]:
        """One transaction on a pooled connection; a lock or connection not had in time is a 503."""
        try:
            with self.pool.connection() as conn, conn.transaction():
                yield conn
        except (PoolTimeout, psycopg.errors.LockNotAvailable, psycopg.OperationalError) as exc:
            raise StoreUnavailable() from exc

    def _query(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        try:
            with self.pool.connection() as conn:
                return conn.execute(sql, args).fetchall()
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise StoreUnavailable() from exc

    def _migrate(self) -> None:
        with self._tx() as c:
            c.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            c.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                      "applied_at timestamptz NOT NULL DEFAULT now())")
            done = {r["version"] for r in c.execute("SELECT version FROM schema_migrations")}
            for number, script in enumerate(MIGRATIONS, start=1):
                if number not in done:
                    c.execute(script)
                    c.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (number,))
                    log.info("policy store migrated to schema %d", number)

    def schema_version(self) -> int:
        return self._query("SELECT max(version) AS v FROM schema_migrations")[0]["v"] or 0

    @staticmethod
    def _audit(c: psycopg.Connection, actor: str, action: str, request_id: str | None, version: int | None,
               detail: dict[str, Any] | None = None) -> None:
        """Append one row to the chain; the advisory lock (held to the transaction's end) serialises appends
        across every replica."""
        c.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
        last = c.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last["seq"] + 1, last["hash"]) if last else (1, GENESIS)
        at, body = time.time(), json.dumps(detail or {}, default=str)
        c.execute("INSERT INTO audit (seq, at, actor, action, request_id, version, detail, prev_hash, hash) "
                  "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                  (seq, at, actor, action, request_id, version, body, prev,
                   audit_hash(prev, seq, at, actor, action, request_id, version, body)))

    @staticmethod
    def _bump(c: psycopg.Connection) -> None:
        """The active set changed: every replica reloads (the notification is delivered at commit)."""
        row = c.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation' RETURNING value").fetchone()
        c.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(row["value"])))

    def watch(self, on_change: Callable[[], None]) -> None:
        """Call `on_change` (from a thread of its own) whenever another process changes the active set, at
        once; reconnects after a lost connection. Polling `generation` stays the fallback."""

        def listen() -> None:
            while not self._closed.is_set():
                try:
                    with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                        conn.execute(f"LISTEN {CHANNEL}")
                        on_change()  # whatever happened while not listening
                        while not self._closed.is_set():  # re-entered each second to see `close`
                            # Not `stop_after`: a second notification read with the first would wait in the
                            # connection's buffer until the next one arrived or the timeout ran out.
                            for _ in conn.notifies(timeout=1.0):
                                on_change()
                except psycopg.Error:
                    log.warning("store notifications lost; listening again in 1 s (polling meanwhile)")
                    self._closed.wait(1.0)

        thread = threading.Thread(target=listen, name="store-notify", daemon=True)
        thread.start()
        self._listeners.append(thread)

    # ---- writes --------------------------------------------------------------------------------

    def create(self, spec: dict[str, Any], actor: str, expires_at: float | None) -> str:
        request_id = f"pol_{uuid.uuid4().hex[:12]}"
        body = json.dumps(spec)
        with self._tx() as c:
            c.execute("INSERT INTO requests (id, target, status, spec, latest_version, requested_by, expires_at, "
                      "created_at, updated_at) VALUES (%s, %s, %s, %s, 1, %s, to_timestamp(%s), now(), now())",
                      (request_id, spec["target"], Status.pending, body, spec.get("requested_by"), expires_at))
            c.execute("INSERT INTO versions (request_id, version, spec, status, created_at) "
                      "VALUES (%s, 1, %s, %s, now())", (request_id, body, Status.pending))
            self._audit(c, actor, "create", request_id, 1, {"target": spec["target"], "reason": spec.get("reason")})
        return request_id

    def add_version(self, request_id: str, spec: dict[str, Any], removed_expanded: list[str], actor: str,
                    expires_at: float | None, *, expand: bool = False, action: str = "patch",
                    claimed_by: str | None = None) -> int:
        return self.patch(request_id, lambda _spec, _removed: (spec, removed_expanded, expires_at), actor,
                          expand=expand, action=action, claimed_by=claimed_by)

    def patch(self, request_id: str, merge: Merge, actor: str, *, expand: bool = False, action: str = "patch",
              claimed_by: str | None = None) -> int:
        with self._tx() as c:
            row = c.execute("SELECT latest_version, status, spec, removed_expanded FROM requests WHERE id = %s "
                            "FOR UPDATE", (request_id,)).fetchone()
            if row is None:
                raise KeyError(request_id)
            if row["status"] in (Status.revoked, Status.expired):
                raise ValueError(f"request is {row['status']}; submit a new request instead")
            spec, removed_expanded, expires_at = merge(row["spec"], row["removed_expanded"])
            version = row["latest_version"] + 1
            c.execute("UPDATE requests SET spec = %s, removed_expanded = %s, latest_version = %s, "
                      "expires_at = to_timestamp(%s), updated_at = now(), "
                      "status = CASE WHEN active_version IS NULL THEN %s ELSE status END WHERE id = %s",
                      (json.dumps(spec), json.dumps(removed_expanded), version, expires_at, Status.pending,
                       request_id))
            c.execute("INSERT INTO versions (request_id, version, spec, status, claimed_by, claimed_at, created_at) "
                      "VALUES (%s, %s, %s, %s, %s, CASE WHEN %s THEN now() END, now())",
                      (request_id, version,
                       json.dumps({**spec, "removed_expanded": removed_expanded, "_expand": expand}),
                       Status.compiling if claimed_by else Status.pending, claimed_by, claimed_by is not None))
            self._audit(c, actor, action, request_id, version, {"removed_expanded": removed_expanded})
        return version

    def claim(self, request_id: str, version: int, worker: str) -> bool:
        with self._tx() as c:
            cur = c.execute("UPDATE versions SET status = %s, claimed_by = %s, claimed_at = now() "
                            "WHERE request_id = %s AND version = %s AND status = %s",
                            (Status.compiling, worker, request_id, version, Status.pending))
            if cur.rowcount != 1:
                return False
            c.execute("UPDATE requests SET status = %s WHERE id = %s AND active_version IS NULL",
                      (Status.compiling, request_id))
            return True

    def activate(self, request_id: str, version: int, artifact_dir: str, manifest: dict[str, Any],
                 actor: str = "compiler", action: str = "activate", detail: dict[str, Any] | None = None) -> bool:
        with self._tx() as c:
            c.execute("UPDATE versions SET status = %s, artifact_dir = %s, manifest = %s, compiled_at = now() "
                      "WHERE request_id = %s AND version = %s",
                      (Status.active, artifact_dir, json.dumps(manifest), request_id, version))
            cur = c.execute("UPDATE requests SET status = %s, active_version = %s, last_error = NULL, "
                            "updated_at = now() WHERE id = %s AND status NOT IN (%s, %s) "
                            "AND (active_version IS NULL OR active_version < %s)",
                            (Status.active, version, request_id, Status.revoked, Status.expired, version))
            self._audit(c, actor, action if cur.rowcount else "compiled-not-activated", request_id, version,
                        {"artifact_dir": artifact_dir, **(detail or {})})
            self._bump(c)
            return cur.rowcount == 1

    def hold(self, request_id: str, version: int, artifact_dir: str, manifest: dict[str, Any], reason: str,
             detail: dict[str, Any] | None = None) -> None:
        with self._tx() as c:
            c.execute("UPDATE versions SET status = %s, artifact_dir = %s, manifest = %s, error = %s, "
                      "compiled_at = now() WHERE request_id = %s AND version = %s",
                      (Status.held, artifact_dir, json.dumps(manifest), reason, request_id, version))
            c.execute("UPDATE requests SET last_error = %s, updated_at = now(), status = CASE WHEN "
                      "active_version IS NULL AND status NOT IN (%s, %s) THEN %s ELSE status END WHERE id = %s",
                      (reason, Status.revoked, Status.expired, Status.held, request_id))
            self._audit(c, "compiler", "hold", request_id, version, {"reason": reason, **(detail or {})})

    def fail(self, request_id: str, version: int, error: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE versions SET status = %s, error = %s, compiled_at = now() "
                      "WHERE request_id = %s AND version = %s", (Status.failed, error, request_id, version))
            c.execute("UPDATE requests SET last_error = %s, updated_at = now(), status = CASE WHEN "
                      "active_version IS NULL AND status NOT IN (%s, %s) THEN %s ELSE status END WHERE id = %s",
                      (error, Status.revoked, Status.expired, Status.failed, request_id))
            self._audit(c, "compiler", "compile-failed", request_id, version, {"error": error})

    def expire_due(self, now: float | None = None) -> list[str]:
        due = [r["id"] for r in self._query(
            "SELECT id FROM requests WHERE expires_at IS NOT NULL AND expires_at <= to_timestamp(%s) "
            "AND status NOT IN (%s, %s)", (now or time.time(), Status.revoked, Status.expired))]
        for request_id in due:
            self._end(request_id, Status.expired, "scheduler", "expire")
        return due

    def _end(self, request_id: str, status: Status, actor: str, action: str) -> None:
        with self._tx() as c:
            cur = c.execute("UPDATE requests SET status = %s, updated_at = now() WHERE id = %s", (status, request_id))
            if cur.rowcount != 1:
                raise KeyError(request_id)
            c.execute("UPDATE versions SET status = %s WHERE request_id = %s AND status IN (%s, %s)",
                      (Status.failed, request_id, Status.pending, Status.compiling))
            self._audit(c, actor, action, request_id, None)
            self._bump(c)

    def put_files(self, blobs: dict[str, bytes]) -> int:
        with self._tx() as c:
            return sum(c.execute("INSERT INTO artifact_files (sha256, data, bytes) VALUES (%s, %s, %s) "
                                 "ON CONFLICT (sha256) DO NOTHING", (sha, data, len(data))).rowcount
                       for sha, data in blobs.items())

    def get_file(self, sha256: str) -> bytes | None:
        rows = self._query("SELECT data FROM artifact_files WHERE sha256 = %s", (sha256,))
        return bytes(rows[0]["data"]) if rows else None

    def note_load_error(self, request_id: str, version: int, error: str, actor: str) -> bool:
        with self._tx() as c:
            cur = c.execute("UPDATE requests SET last_error = %s, updated_at = now() WHERE id = %s AND "
                            "active_version = %s AND (last_error IS NULL OR last_error != %s)",
                            (error, request_id, version, error))
            if cur.rowcount:
                self._audit(c, actor, "load-failed", request_id, version, {"error": error})
            return cur.rowcount == 1

    def release_stale_claims(self, older_than_s: float) -> int:
        with self._tx() as c:
            return c.execute("UPDATE versions SET status = %s, claimed_by = NULL WHERE status = %s "
                             "AND claimed_at < now() - make_interval(secs => %s)",
                             (Status.pending, Status.compiling, older_than_s)).rowcount

    def renew(self, request_id: str, version: int, worker: str) -> bool:
        with self._tx() as c:
            return c.execute("UPDATE versions SET claimed_at = now() WHERE request_id = %s AND version = %s "
                             "AND status = %s AND claimed_by = %s",
                             (request_id, version, Status.compiling, worker)).rowcount == 1

    def release(self, request_id: str, version: int, worker: str) -> bool:
        with self._tx() as c:
            cur = c.execute("UPDATE versions SET status = %s, claimed_by = NULL, claimed_at = NULL "
                            "WHERE request_id = %s AND version = %s AND status = %s AND claimed_by = %s",
                            (Status.pending, request_id, version, Status.compiling, worker))
            if cur.rowcount:
                self._audit(c, worker, "compile-released", request_id, version)
            return cur.rowcount == 1

    # ---- reads ---------------------------------------------------------------------------------

    def generation(self) -> int:
        return self._query("SELECT value FROM meta WHERE key = 'generation'")[0]["value"]

    def get(self, request_id: str) -> RequestRow | None:
        rows = self._query("SELECT * FROM requests_epoch WHERE id = %s", (request_id,))
        return _row(RequestRow, rows[0]) if rows else None

    def list(self, status: Status | None = None) -> list[RequestRow]:
        if status is None:
            rows = self._query("SELECT * FROM requests_epoch ORDER BY created_at")
        else:
            rows = self._query("SELECT * FROM requests_epoch WHERE status = %s ORDER BY created_at", (status,))
        return [_row(RequestRow, r) for r in rows]

    def versions(self, request_id: str) -> list[VersionRow]:
        rows = self._query("SELECT * FROM versions_epoch WHERE request_id = %s ORDER BY version", (request_id,))
        return [_row(VersionRow, r) for r in rows]

    def version(self, request_id: str, version: int) -> VersionRow | None:
        rows = self._query("SELECT * FROM versions_epoch WHERE request_id = %s AND version = %s",
                           (request_id, version))
        return _row(VersionRow, rows[0]) if rows else None

    def pending(self) -> list[VersionRow]:
        rows = self._query("SELECT * FROM versions_epoch WHERE status = %s ORDER BY created_at", (Status.pending,))
        return [_row(VersionRow, r) for r in rows]

    def active(self) -> list[tuple[RequestRow, VersionRow]]:
        rows = self._query(
            "SELECT to_jsonb(r) AS r, to_jsonb(v) AS v FROM requests_epoch r JOIN versions_epoch v "
            "ON v.request_id = r.id AND v.version = r.active_version WHERE r.status = %s ORDER BY r.created_at",
            (Status.active,))
        return [(_row(RequestRow, x["r"]), _row(VersionRow, x["v"])) for x in rows]

    def _audit_rows(self) -> Iterable[dict[str, Any]]:
        return self._query("SELECT seq, at, actor, action, request_id, version, detail, prev_hash, hash "
                           "FROM audit ORDER BY seq")

    def audit(self, request_id: str | None = None, limit: int = 500) -> list[AuditRow]:
        columns = "seq, at, actor, action, request_id, version, detail, hash"
        if request_id is None:
            rows = self._query(f"SELECT {columns} FROM audit ORDER BY seq DESC LIMIT %s", (limit,))
        else:
            rows = self._query(f"SELECT {columns} FROM audit WHERE request_id = %s ORDER BY seq DESC LIMIT %s",
                               (request_id, limit))
        return [_row(AuditRow, r) for r in rows]


def _safe(url: str) -> str:
    """A connection URL without its password, for messages."""
    scheme, _, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}://{creds.split(':')[0]}@{host}" if at else url
