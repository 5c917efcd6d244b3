"""The policy store's contract on both backends, SQLite (one box) and a real PostgreSQL server (replicas on
several machines): concurrent writers from two store instances (two replicas), migrations, the append-only audit
chain, and pushed changes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from guard_service.store.base import PolicyStore, Status, open_store
from tests.conftest import fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'guard.sqlite3'}"
    return fresh_database(request.getfixturevalue("postgres"), f"t_{request.node.name[:40].lower()}"
                          .replace("[", "_").replace("]", "").replace("-", "_"))


def _artifact(folder: Path, policy_id: str, version: int, files: dict[str, bytes]) -> dict:
    """A published version's folder (files + manifest.json) as the compiler leaves it; its manifest."""
    import hashlib
    import json

    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    manifest = {"policy_id": policy_id, "version": version, "target": "X", "action": "refuse", "strength": {},
                "tokenizer": {}, "model": {}, "embedder": "e",
                "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for n, d in files.items()}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def _replicas(url: str, n: int = 2) -> list[PolicyStore]:
    return [open_store(url, 10.0) for _ in range(n)]


def test_concurrent_patches_from_two_replicas_get_consecutive_versions(url: str) -> None:
    a, b = _replicas(url)
    request_id = a.create({"target": "Ada Lovelace"}, "ops", None)
    numbers: list[int] = []

    def patch(store: PolicyStore, k: int) -> None:
        for i in range(10):
            numbers.append(store.add_version(request_id, {"target": "Ada Lovelace", "aliases": [f"{k}-{i}"]}, [],
                                             "ops", None))

    threads = [threading.Thread(target=patch, args=(s, k)) for k, s in enumerate((a, b, a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(numbers) == list(range(2, 42))  # no duplicate, none lost
    row = b.get(request_id)
    assert row.latest_version == 41 and len(a.versions(request_id)) == 41
    assert {tuple(v.spec["aliases"]) for v in a.versions(request_id)[1:]} == {
        (f"{k}-{i}",) for k in range(4) for i in range(10)}
    assert a.verify_audit().ok and a.verify_audit().rows == 41
    for s in (a, b):
        s.close()


def test_one_replica_wins_each_compile_claim(url: str) -> None:
    a, b = _replicas(url)
    ids = [a.create({"target": f"T{i}"}, "ops", None) for i in range(20)]
    wins: dict[str, list[str]] = {"a": [], "b": []}

    def claim(store: PolicyStore, name: str) -> None:
        for row in store.pending():
            if store.claim(row.request_id, row.version, name):
                wins[name].append(row.request_id)

    threads = [threading.Thread(target=claim, args=(s, n)) for s, n in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins["a"] + wins["b"]) == sorted(ids)
    assert all(v.status == Status.compiling for i in ids for v in b.versions(i))
    for s in (a, b):
        s.close()


def test_lifecycle_rows_read_the_same_on_both_backends(url: str) -> None:
    store = open_store(url, 10.0)
    expires = time.time() + 3600
    request_id = store.create({"target": "Grace Hopper", "requested_by": "legal"}, "ops", expires)
    row = store.get(request_id)
    assert row.status == Status.pending and row.requested_by == "legal" and abs(row.expires_at - expires) < 1e-3
    assert store.claim(request_id, 1, "w") and not store.claim(request_id, 1, "w2")
    generation = store.generation()
    assert store.activate(request_id, 1, "/artifacts/v1", {"preview": {"rate": 0.0}})
    assert store.generation() == generation + 1
    [(req, ver)] = store.active()
    assert req.id == request_id and ver.manifest == {"preview": {"rate": 0.0}} and ver.status == Status.active
    store.hold(request_id, store.add_version(request_id, row.spec, [], "ops", None), "/artifacts/v2", {}, "too broad")
    assert store.get(request_id).status == Status.active and store.version(request_id, 2).status == Status.held
    store.revoke(request_id, "ops")
    assert store.get(request_id).status == Status.revoked and store.active() == []
    actions = [a.action for a in store.audit(request_id)]
    assert actions == ["revoke", "hold", "patch", "activate", "create"]
    assert store.verify_audit().ok
    store.close()


def test_postgres_migrates_once_when_replicas_start_together(postgres: str) -> None:
    url = fresh_database(postgres, "migrate_once")
    errors: list[BaseException] = []
    stores: list[PolicyStore] = []

    def start() -> None:
        try:
            stores.append(open_store(url, 10.0))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version"
                            ).fetchall() == [(1, 1), (2, 1)]
        types = dict(conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                                  "WHERE table_name = 'versions'").fetchall())
    assert types["spec"] == "jsonb" and types["created_at"] == "timestamp with time zone"
    for s in stores:
        s.close()


def test_postgres_refuses_to_change_audit_rows_and_the_chain_continues(postgres: str) -> None:
    url = fresh_database(postgres, "audit_chain")
    store = open_store(url, 10.0)
    store.create({"target": "Alan Turing"}, "ops", None)
    store.record("ops", "note", detail={"why": "test"})
    with psycopg.connect(url, autocommit=True) as conn:
        for sql in ("UPDATE audit SET actor = 'someone else'", "DELETE FROM audit", "TRUNCATE audit"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(sql)
        assert conn.execute("SELECT detail_json->>'why', at_time IS NOT NULL FROM audit WHERE action = 'note'"
                            ).fetchone() == ("test", True)
    check = store.verify_audit()
    assert check.ok and check.rows == 2
    store.close()


def test_postgres_pushes_every_change_to_the_other_replicas(postgres: str) -> None:
    """LISTEN/NOTIFY: replica B hears of each activation or revocation replica A commits, without polling."""
    url = fresh_database(postgres, "push")
    a, b = _replicas(url)
    heard: list[float] = []
    b.watch(lambda: heard.append(time.monotonic()))
    time.sleep(0.5)
    heard.clear()
    delays = []
    for i in range(20):
        request_id = a.create({"target": f"Target {i}"}, "ops", None)
        count, began = len(heard), time.monotonic()
        a.activate(request_id, 1, f"/artifacts/{i}", {})
        while len(heard) == count and time.monotonic() - began < 5:
            time.sleep(0.002)
        delays.append(heard[-1] - began if len(heard) > count else 5.0)
    assert max(delays) < 1.0, delays
    for s in (a, b):
        s.close()


def test_an_unreachable_postgres_is_a_clear_503_not_a_hang() -> None:
    from guard_service.errors import StoreUnavailable
    from tests.conftest import free_port

    began = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        open_store(f"postgresql://guard:secret@127.0.0.1:{free_port()}/nothing", 1.0)
    assert time.monotonic() - began < 10 and caught.value.status == 503
    assert "secret" not in caught.value.message


def test_compile_claims_are_leases_renewed_swept_and_given_back(url: str) -> None:
    """A claim renewed by its holder survives the sweep; one whose holder stopped renewing goes back to pending
    and another replica takes it; a holder shutting down gives it back at once (audited)."""
    a, b = _replicas(url)
    first, second = (a.create({"target": name}, "ops", None) for name in ("Kept", "Abandoned"))
    assert a.claim(first, 1, "a") and a.claim(second, 1, "a")
    time.sleep(1.2)
    assert a.renew(first, 1, "a") and not b.renew(first, 1, "b")  # only the holder renews
    assert b.release_stale_claims(1.0) == 1  # "Abandoned" was not renewed for a second
    assert b.version(first, 1).status == Status.compiling and b.version(second, 1).status == Status.pending
    assert b.claim(second, 1, "b") and not a.renew(second, 1, "a")  # taken over: the old holder learns it
    assert a.release(first, 1, "a") and not a.release(first, 1, "a")
    assert b.version(first, 1).status == Status.pending and b.claim(first, 1, "b")
    assert any(x.action == "compile-released" and x.actor == "a" for x in b.audit(first))
    for s in (a, b):
        s.close()


def test_artifact_files_go_through_the_store_by_hash(url: str, tmp_path: Path) -> None:
    """A version compiled on one replica is rebuilt on another from the store alone, every file verified by
    sha256; a file the store lost or changed fails the fetch and leaves nothing behind."""
    from guard_service.policy.artifacts import blobs, fetch, read_manifest, verify

    compiled = tmp_path / "a" / "pol_x" / "v3"
    files = {"forbidden.json": b'{"items": []}', "provenance/sa.npy": bytes(range(256)) * 64}
    manifest = _artifact(compiled, "pol_x", 3, files)
    a, b = _replicas(url)
    assert a.put_files(blobs(compiled)) == 2 and a.put_files(blobs(compiled)) == 0  # content-addressed
    fetched = fetch(tmp_path / "b", "pol_x", 3, manifest, b.get_file)
    assert fetched == tmp_path / "b" / "pol_x" / "v3" and verify(fetched) == []
    assert read_manifest(fetched).files == read_manifest(compiled).files
    assert (fetched / "provenance" / "sa.npy").read_bytes() == files["provenance/sa.npy"]

    lost = {**manifest, "version": 4,
            "files": {**manifest["files"], "x.npy": {"sha256": "0" * 64, "bytes": 1}}}
    with pytest.raises(ValueError, match="no intact copy of x.npy"):
        fetch(tmp_path / "b", "pol_x", 4, lost, b.get_file)
    assert sorted(p.name for p in (tmp_path / "b" / "pol_x").iterdir()) == ["v3"]  # nothing half-written
    for s in (a, b):
        s.close()


def test_store_migrate_copies_sqlite_into_postgres_with_the_chain_intact(postgres: str, tmp_path: Path) -> None:
    """`guard-service store migrate`: requests, versions, artifact files and the audit chain (each row's own
    hash) arrive as they were, verified; the chain goes on in PostgreSQL; an occupied destination is refused."""
    import subprocess
    import sys

    source_url = f"sqlite:///{tmp_path / 'guard.sqlite3'}"
    sqlite = open_store(source_url, 10.0)
    request_id = sqlite.create({"target": "Ada Lovelace", "requested_by": "legal"}, "ops", None)
    folder = tmp_path / "policies" / request_id / "v1"
    manifest = _artifact(folder, request_id, 1, {"forbidden.json": b"{}"})
    assert sqlite.claim(request_id, 1, "w") and sqlite.activate(request_id, 1, str(folder), manifest)
    sqlite.add_version(request_id, {"target": "Ada Lovelace", "aliases": ["Ada King"]}, [], "ops", None)
    sqlite.record("ops", "note", request_id, {"why": "before the move"})
    before = sqlite.audit(limit=100)
    sqlite.close()

    destination = fresh_database(postgres, "migrated")
    run = [sys.executable, "-m", "guard_service.cli", "store", "migrate", "--from", source_url, "--to", destination]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "migrated 1 requests, 2 versions, 1 artifact files and 4 audit rows" in done.stdout
    pg = open_store(destination, 10.0)
    row = pg.get(request_id)
    assert (row.target, row.active_version, row.latest_version, row.requested_by) == ("Ada Lovelace", 1, 2, "legal")
    assert [v.status for v in pg.versions(request_id)] == [Status.active, Status.pending]
    assert [(a.seq, a.hash) for a in pg.audit(limit=100)] == [(a.seq, a.hash) for a in before]
    assert pg.get_file(manifest["files"]["forbidden.json"]["sha256"]) == b"{}"
    pg.record("ops", "after the move", request_id)
    assert pg.verify_audit().ok and pg.verify_audit().rows == 5
    again = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already holds" in again.stderr
    pg.close()
