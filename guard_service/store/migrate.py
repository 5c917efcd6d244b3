"""`guard-service store migrate --from sqlite:///… --to postgresql://…`: one box's SQLite store into the
PostgreSQL store replicas on several machines share. Requests, every version, the artifact files (from the
SQLite store and from the artifact folders its versions name) and the audit chain are copied as they are: ids,
version numbers, times, and each audit row with its own hash, so the chain goes on unbroken. Refuses a
destination that already holds requests or audit rows; verifies the copy (counts, the chain end to end, the
last hash, every version's files) before it reports success."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from pydantic import BaseModel

from guard_service.policy.artifacts import blobs
from guard_service.store.base import open_store
from guard_service.store.postgres import PostgresStore
from guard_service.store.sqlite import SqliteStore


class Migrated(BaseModel):
    requests: int
    versions: int
    files: int
    audit_rows: int
    last_hash: str | None
    missing_artifacts: list[str]  # versions whose folder was gone and whose files the source store lacked


def migrate(source_url: str, destination_url: str, base_dir: Path | None = None) -> Migrated:
    source, destination = open_store(source_url, 30.0, base_dir), open_store(destination_url, 30.0, base_dir)
    if not isinstance(source, SqliteStore) or not isinstance(destination, PostgresStore):
        raise ValueError("store migrate copies a sqlite:/// store into a postgresql:// one")
    try:
        return _copy(source, destination)
    finally:
        source.close()
        destination.close()


def _copy(source: SqliteStore, destination: PostgresStore) -> Migrated:
    with destination._tx() as c:
        if c.execute("SELECT (SELECT count(*) FROM requests) + (SELECT count(*) FROM audit) AS n").fetchone()["n"]:
            raise ValueError("the destination store already holds requests or audit rows; migrate into an empty one")
    db = sqlite3.connect(f"file:{source.path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        requests = db.execute("SELECT * FROM requests ORDER BY created_at").fetchall()
        versions = db.execute("SELECT * FROM versions ORDER BY request_id, version").fetchall()
        audit = db.execute("SELECT * FROM audit ORDER BY seq").fetchall()
        stored = {r["sha256"]: bytes(r["data"]) for r in db.execute("SELECT sha256, data FROM files")}
        generation = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()["value"]
    finally:
        db.close()
    missing = []
    for v in versions:  # versions compiled before the store kept files: read them from their folders
        folder = Path(v["artifact_dir"]) if v["artifact_dir"] else None
        wanted = {e["sha256"] for e in json.loads(v["manifest"] or "{}").get("files", {}).values()}
        if wanted - stored.keys():
            if folder is not None and folder.is_dir():
                stored.update(blobs(folder))
            if wanted - stored.keys():
                missing.append(f"{v['request_id']}@{v['version']}")
    with destination._tx() as c:
        for r in requests:
            c.execute("INSERT INTO requests (id, target, status, spec, removed_expanded, latest_version, "
                      "active_version, last_error, requested_by, expires_at, created_at, updated_at) VALUES "
                      "(%s, %s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s), to_timestamp(%s), to_timestamp(%s))",
                      (r["id"], r["target"], r["status"], r["spec"], r["removed_expanded"], r["latest_version"],
                       r["active_version"], r["last_error"], r["requested_by"], r["expires_at"], r["created_at"],
                       r["updated_at"]))
        for v in versions:
            c.execute("INSERT INTO versions (request_id, version, spec, status, error, artifact_dir, manifest, "
                      "claimed_by, claimed_at, created_at, compiled_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
                      "to_timestamp(%s), to_timestamp(%s), to_timestamp(%s))",
                      (v["request_id"], v["version"], v["spec"], v["status"], v["error"], v["artifact_dir"],
                       v["manifest"], v["claimed_by"], v["claimed_at"], v["created_at"], v["compiled_at"]))
        for a in audit:
            c.execute("INSERT INTO audit (seq, at, actor, action, request_id, version, detail, prev_hash, hash) "
                      "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                      (a["seq"], a["at"], a["actor"], a["action"], a["request_id"], a["version"], a["detail"],
                       a["prev_hash"], a["hash"]))
        c.execute("UPDATE meta SET value = %s WHERE key = 'generation'", (generation + 1,))
    destination.put_files(stored)
    check = destination.verify_audit()
    last = destination.audit(limit=1)
    copied = Migrated(requests=len(destination.list()), versions=sum(len(destination.versions(r["id"]))
                                                                      for r in requests),
                      files=len(stored), audit_rows=check.rows, last_hash=last[0].hash if last else None,
                      missing_artifacts=missing)
    if (not check.ok or copied.requests != len(requests) or copied.versions != len(versions)
            or copied.audit_rows != len(audit) or (audit and copied.last_hash != audit[-1]["hash"])):
        raise ValueError(f"the copy does not match its source: {copied.model_dump()} (audit: {check.reason})")
    return copied
