"""Two replicas on one box sharing a real PostgreSQL store and nothing else (as on several machines: each its own
artifact folder, the default KV cache size in bytes): a request made on one is enforced by the other, every
change reaches it by push within a second, and a revocation stops it there too."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from bench.processes import restart_server, start_servers, stop_servers
from tests.conftest import ADMIN_TOKEN, MODEL_NAME, LocalPostgres, Server, fresh_database

pytestmark = pytest.mark.own_engine
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LEASE_S = 3.0


@pytest.fixture(scope="module")
def replicas(postgres: str, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Server]:
    """Each its own data dir (no shared artifact volume: a version compiled by one is fetched by the other from the
    store), and the KV cache at its default size in bytes (GUARD_KV_CACHE_BYTES): both fit this box. A test may
    replace a server it stopped with a restarted one; every server in the list is stopped at the end."""
    root = tmp_path_factory.mktemp("replicas")
    env = {"GUARD_STORE_URL": fresh_database(postgres, "replicas"), "GUARD_MAX_MODEL_LEN": "512",
           "GUARD_COMPILE_LEASE_S": str(LEASE_S)}
    for name in ("a", "b"):
        (root / name).mkdir()
    servers = start_servers([root / "a", root / "b"], env)
    try:
        yield servers
    finally:
        stop_servers(servers)


def _store_url(server: Server) -> str:
    return server.env["GUARD_STORE_URL"]


def _detail(server: Server, request_id: str) -> dict:
    return httpx.get(f"{server.base_url}/admin/v1/unlearning-requests/{request_id}", headers=ADMIN, timeout=30).json()


def _action(server: Server, prompt: str) -> str:
    client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_NAME, max_tokens=1, temperature=0, messages=[{"role": "user", "content": prompt}])
    return raw.headers["x-guard-action"]


def _enforced_at(server: Server, request_id: str, version: int, timeout: float = 60) -> float:
    """When `server` began enforcing `version`, by its own clock (`enforcement.since`): the push's delay without
    this poll's (a detail request took 50-420 ms here while both replicas compiled and loaded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = _detail(server, request_id)
        state = body["enforcement"]
        if (state["state"], state["version"], state["error"]) == ("enforced", version, None):
            assert state["since"] <= time.time()
            return state["since"]
        time.sleep(0.01)
    raise AssertionError(f"{request_id} v{version} not enforced on {server.base_url}: {body}")


def test_a_change_on_one_replica_is_enforced_by_the_other_within_a_second(replicas: list[Server]) -> None:
    a, b = replicas
    question = "Who was Ada Lovelace and what did she write about the Analytical Engine?"
    assert _action(b, question) == "pass"
    r = httpx.post(f"{a.base_url}/admin/v1/unlearning-requests", headers=ADMIN, json={
        "target": "Ada Lovelace", "action": "refuse", "strength": {"expand_knowledge": False}})
    assert r.status_code == 202, r.text
    request_id = r.json()["id"]
    _enforced_at(b, request_id, 1)
    assert _action(b, question) == "refuse"
    _enforced_at(a, request_id, 1)
    for server in (a, b):  # both hold the version's files, whichever compiled it
        assert (server.data_dir / "policies" / request_id / "v1" / "manifest.json").is_file()

    delays = []
    for version in range(2, 12):  # each patch is compiled by whichever replica claims it
        patched = httpx.patch(f"{a.base_url}/admin/v1/unlearning-requests/{request_id}", headers=ADMIN,
                              json={"aliases": [f"Augusta Ada King {version}"]})
        assert patched.status_code == 202 and patched.json()["version"] == version
        seen = _enforced_at(b, request_id, version)
        audit = httpx.get(f"{a.base_url}/admin/v1/audit", headers=ADMIN, params={"request_id": request_id}).json()
        activated = next(x["at"] for x in audit if x["action"] == "activate" and x["version"] == version)
        delays.append(seen - activated)
    print(f"propagation A -> B, 10 patches: median {sorted(delays)[5]:.3f} s, max {max(delays):.3f} s")
    assert max(delays) < 1.0, delays  # p99 of 10 is their maximum

    # Revocation, judged like the patches by the servers' own clocks: from the revoke B committed (its audit row)
    # to the instant A stopped enforcing (`enforcement.since` once not_enforced), without either request's latency.
    assert httpx.delete(f"{b.base_url}/admin/v1/unlearning-requests/{request_id}", headers=ADMIN).status_code == 200
    deadline = time.monotonic() + 5
    while (state := _detail(a, request_id)["enforcement"])["state"] != "not_enforced" and time.monotonic() < deadline:
        time.sleep(0.01)
    audit = httpx.get(f"{b.base_url}/admin/v1/audit", headers=ADMIN, params={"request_id": request_id}).json()
    revoked_at = next(x["at"] for x in audit if x["action"] == "revoke")
    assert state["state"] == "not_enforced" and state["version"] == 11, state
    print(f"revocation B -> A: {state['since'] - revoked_at:.3f} s")
    assert 0 <= state["since"] - revoked_at < 1.0
    assert _action(a, question) == "pass"


def test_concurrent_patches_through_both_replicas_lose_nothing(replicas: list[Server]) -> None:
    """20 PATCHes at once, half through each replica, each changing one of four fields: 20 new versions with no
    gap, and the newest version holds, for every field, the value of the last PATCH that set it."""
    a, b = replicas
    r = httpx.post(f"{a.base_url}/admin/v1/unlearning-requests", headers=ADMIN, json={
        "target": "Grace Hopper", "action": "refuse", "strength": {"expand_knowledge": False}})
    request_id = r.json()["id"]
    fields = ("description", "reason", "example_prompts", "retain_examples")
    results: list[tuple[int, str, object]] = []

    def patch(k: int) -> None:
        field = fields[k % 4]
        value = f"change {k}" if field in ("description", "reason") else [f"question number {k}?"]
        server = (a, b)[k % 2]
        reply = httpx.patch(f"{server.base_url}/admin/v1/unlearning-requests/{request_id}", headers=ADMIN,
                            json={field: value}, timeout=60)
        assert reply.status_code == 202, reply.text
        results.append((reply.json()["version"], field, value))

    threads = [threading.Thread(target=patch, args=(k,)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sorted(v for v, _, _ in results) == list(range(2, 22))
        newest = _detail(a, request_id)["spec"]
        for field in fields:
            last = max((r for r in results if r[1] == field), key=lambda r: r[0])
            assert newest[field] == last[2], (field, newest[field], last)
    finally:
        httpx.delete(f"{a.base_url}/admin/v1/unlearning-requests/{request_id}", headers=ADMIN)


def test_postgres_down_then_back_admin_writes_503_generation_goes_on(
        replicas: list[Server], postgres_server: LocalPostgres) -> None:
    """The store's server stops (every replica loses it at once): admin writes answer 503 with Retry-After and
    leak no connection detail, requests are still guarded by the policies already loaded, and the processes stay
    up; once it is back the same processes take writes, compile, and push changes to each other again (the
    listener reconnects), no restart. (Moved here from test_faults, where it had a server of its own.)"""
    a, b = replicas
    r = httpx.post(f"{a.base_url}/admin/v1/unlearning-requests", headers=ADMIN, json={
        "target": "George Darling", "action": "refuse", "strength": {"expand_knowledge": False}})
    george = r.json()["id"]
    for server in replicas:
        _enforced_at(server, george, 1)
    postgres_server.stop()
    try:
        down = httpx.post(f"{a.base_url}/admin/v1/unlearning-requests", headers=ADMIN, timeout=60,
                          json={"target": "Mary Darling", "action": "refuse"})  # after the busy timeout (10 s)
        assert down.status_code == 503 and int(down.headers["retry-after"]) > 0, down.text
        assert down.json()["error"]["code"] and "password" not in down.text and "5432" not in down.text
        for server in replicas:
            assert _action(server, "Who is George Darling?") == "refuse"
            assert _action(server, "What is the capital of France?") == "pass"
        time.sleep(3)  # the registries' and the schedulers' polls fail meanwhile, logged, not fatal
        for server in replicas:
            assert server.proc.poll() is None and httpx.get(server.base_url + "/health").status_code == 200
    finally:
        postgres_server.start()
    deadline = time.monotonic() + 60
    while (up := httpx.post(f"{b.base_url}/admin/v1/unlearning-requests", headers=ADMIN, timeout=60, json={
            "target": "Mary Darling", "action": "refuse",
            "strength": {"expand_knowledge": False}})).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert up.status_code == 202, up.text
    mary = up.json()["id"]
    for server in (b, a):  # made on B, enforced on A by push: the listener is back
        _enforced_at(server, mary, 1)
    assert _action(a, "Who is Mary Darling?") == "refuse"
    for request_id in (george, mary):
        httpx.delete(f"{a.base_url}/admin/v1/unlearning-requests/{request_id}", headers=ADMIN)


def _expansion_being_compiled(db, a: Server, target: str, description: str) -> tuple[str, str]:
    """A request whose knowledge-expansion version (v2: it asks the model, seconds) is being compiled right now;
    its id and the claim's holder (`host:pid`)."""
    r = httpx.post(f"{a.base_url}/admin/v1/unlearning-requests", headers=ADMIN, json={
        "target": target, "kind": "entity", "action": "refuse", "description": description})
    request_id = r.json()["id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        row = db.execute("SELECT claimed_by FROM versions WHERE request_id = %s AND version = 2 "
                         "AND status = 'compiling'", (request_id,)).fetchone()
        if row:
            return request_id, row[0]
        time.sleep(0.01)
    raise AssertionError("the expansion version was never seen compiling")


def test_sigterm_during_a_compile_gives_it_back_and_the_other_replica_finishes_it(
        replicas: list[Server], tmp_path: Path) -> None:
    """A rolling deploy: SIGTERM the compiling replica. It exits 0 having released its claim (audited
    `compile-released`, never `failed`); the other replica claims it at once, without waiting for the lease to
    run out, and enforces it. The stopped replica is started again for the tests after this one."""
    import psycopg

    with psycopg.connect(_store_url(replicas[0]), autocommit=True) as db:
        request_id, holder_id = _expansion_being_compiled(
            db, replicas[0], "Dorothy Vaughan", "A NASA mathematician who led the West Area Computing unit.")
        holder = next(s for s in replicas if holder_id.endswith(f":{s.proc.pid}"))
        survivor = next(s for s in replicas if s is not holder)
        holder.proc.terminate()
        stopped = time.monotonic()
        taken = None
        while time.monotonic() - stopped < 60:
            status, claimed_by = db.execute("SELECT status, claimed_by FROM versions WHERE request_id = %s "
                                            "AND version = 2", (request_id,)).fetchone()
            assert status != "failed"
            if taken is None and status == "compiling" and claimed_by != holder_id:
                taken = time.monotonic() - stopped
            if status == "active":
                break
            time.sleep(0.02)
        actions = [r[0] for r in db.execute("SELECT action FROM audit WHERE request_id = %s AND version = 2 "
                                            "ORDER BY seq", (request_id,))]
    assert holder.proc.wait(60) == 0, holder.log_tail()
    print(f"SIGTERM mid-compile: claimed by the other replica after {taken} s (lease {LEASE_S} s)")
    assert status == "active" and "compile-released" in actions and "compile-failed" not in actions, actions
    assert taken is not None and taken < LEASE_S  # given back, not left to expire
    _enforced_at(survivor, request_id, 2)
    replicas[replicas.index(holder)] = restart_server(holder, tmp_path)


def test_a_replica_killed_mid_compile_is_taken_over_within_the_lease(replicas: list[Server]) -> None:
    """kill -9 whichever replica is compiling: its lease stops being renewed, the other replica's sweep gives the
    version back and it compiles and enforces it. (Last in the module: it leaves one replica.)"""
    import os
    import signal

    import psycopg

    with psycopg.connect(_store_url(replicas[0]), autocommit=True) as db:
        request_id, holder_id = _expansion_being_compiled(
            db, replicas[0], "Katherine Johnson", "A NASA mathematician who computed orbital trajectories.")
        holder = next(s for s in replicas if holder_id.endswith(f":{s.proc.pid}"))
        os.killpg(holder.proc.pid, signal.SIGKILL)  # the API process and its engine, no goodbye
        killed = time.monotonic()
        survivor = next(s for s in replicas if s is not holder)
        taken = None
        while time.monotonic() - killed < 60:
            state = db.execute("SELECT status, claimed_by FROM versions WHERE request_id = %s AND version = 2",
                               (request_id,)).fetchone()
            if taken is None and state[0] == "compiling" and state[1] != holder_id:
                taken = time.monotonic() - killed
            if state[0] == "active":
                break
            time.sleep(0.02)
        done = time.monotonic() - killed
    holder.proc.wait(10)
    print(f"takeover after kill -9: claimed again after {taken} s, enforced after {done:.2f} s (lease {LEASE_S} s)")
    assert state[0] == "active" and taken is not None and taken < LEASE_S + LEASE_S / 2 + 1.0
    _enforced_at(survivor, request_id, 2)
