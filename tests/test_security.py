"""A locked-down server (client API keys, /metrics and /docs behind tokens, a small body cap and store busy
timeout): tenants, authentication and its audit, a schema fuzz with zero 5xx, a chunked oversized body, the
event loop under a held store lock, failing closed in the API process, recompiling, and the audit chain. The
faults that end a server end this one's two lives, each start costing half a minute: a full disk (its artifacts
on a tmpfs), kill -9 mid-compile with a restart onto artifacts it cannot trust, and a dead engine worker."""

from __future__ import annotations

import gc
import json
import os
import re
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from bench.processes import stop_servers
from tests.conftest import (
    ADMIN_TOKEN,
    MODEL_NAME,
    VIEWER_TOKEN,
    Server,
    read_response,
    start_server,
    stop_server,
)

KEYS = {"acme": "key-acme-1234", "beta": "key-beta-5678"}
pytestmark = pytest.mark.own_engine
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BODY_CAP = 4 * 1024 * 1024
ENV = {"GUARD_API_KEYS": json.dumps(KEYS), "GUARD_METRICS_AUTH": "1", "GUARD_DOCS_AUTH": "1",
       "GUARD_MAX_MODEL_LEN": "512", "GUARD_GPU_MEMORY_UTILIZATION": "0.15", "GUARD_MAX_REQUEST_BYTES": str(BODY_CAP),
       "GUARD_STORE_BUSY_TIMEOUT_S": "1", "GUARD_COMPILE_LEASE_S": "3"}
LONG = {"model": MODEL_NAME, "temperature": 0, "max_tokens": 200, "extra_body": {"ignore_eos": True},
        "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]}


class Locked:
    """The module's server. Its artifacts are on a tmpfs where this process may mount one (the full-disk test);
    a test may crash it (kill -9) and restart it on the same data, and the last one ends it."""

    def __init__(self, workdir: Path, policies: Path, tmpfs: bool):
        self.workdir, self.policies, self.tmpfs = workdir, policies, tmpfs
        self.env = {**ENV, "GUARD_POLICIES_DIR": str(policies)}
        self.runs: list[Server] = []
        self.runs.append(start_server(self._next_dir(), self.env))

    def _next_dir(self) -> Path:
        path = self.workdir / f"run{len(self.runs)}"
        path.mkdir()
        return path

    @property
    def server(self) -> Server:
        return self.runs[-1]

    def crash(self) -> None:
        """kill -9 of the whole process group: the API process and its engine, no goodbye."""
        os.killpg(self.server.proc.pid, signal.SIGKILL)
        self.server.proc.wait(30)

    def restart(self) -> None:
        """A new process on the same store and artifacts (a supervisor's restart)."""
        stop_server(self.server)
        self.runs.append(start_server(self._next_dir(), self.env, data_dir=self.server.data_dir))

    @property
    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.base_url + "/admin/v1", headers=ADMIN, timeout=120)

    def client(self, tenant: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.server.v1, api_key=KEYS[tenant], max_retries=0, timeout=120)

    def wait(self, request_id: str, version: int | None = None, state: str = "enforced",
             timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            body = self.admin.get(f"/unlearning-requests/{request_id}").json()
            enforcement = body["enforcement"]
            if enforcement["state"] == state and (version is None or enforcement["version"] == version):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(body)
            time.sleep(0.2)


@pytest.fixture(scope="module")
def locked(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Locked]:
    root = tmp_path_factory.mktemp("locked")
    policies = root / "policies"
    policies.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(policies)],
                             capture_output=True).returncode == 0
    try:
        holder = Locked(root, policies, mounted)
        yield holder
        stop_servers(holder.runs)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(policies)], capture_output=True)


def audit_rows(locked: Locked, action: str, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = [a for a in locked.admin.get("/audit", params={"limit": 2000}).json() if a["action"] == action]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_disk_full_while_writing_artifacts_fails_the_version_and_keeps_the_last(locked: Locked) -> None:
    """The artifacts on a 2 MiB tmpfs: a name-only version fits, one with ~1.5 MB of protected text does not. It
    fails with the OS's reason, the previous version stays enforced, nothing half-written is left; once there is
    room again (64 MiB, for the tests after this one) a recompile succeeds. (From test_faults, where it had a
    server of its own.)"""
    import random

    if not locked.tmpfs:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    admin = locked.admin
    r = admin.post("/unlearning-requests", json={"target": "Edmund Blackadder", "action": "refuse",
                                                 "strength": {"expand_knowledge": False}})
    request_id = r.json()["id"]
    locked.wait(request_id, 1)
    words = [f"{w}{k}" for k in range(40) for w in ("tide", "lamp", "stone", "reed", "gull", "mast")]
    rng = random.Random(5)
    document = " ".join(rng.choice(words) for _ in range(220_000))  # ~1.5 MB, ~400k tokens
    assert admin.patch(f"/unlearning-requests/{request_id}",
                       json={"protected_documents": [document]}).status_code == 202
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        body = admin.get(f"/unlearning-requests/{request_id}").json()
        v2 = next(v for v in body["versions"] if v["version"] == 2)
        if v2["status"] in ("failed", "active"):
            break
        time.sleep(0.2)
    assert v2["status"] == "failed" and "No space left on device" in (v2["error"] or ""), v2
    assert {**body["enforcement"], "since": None} == {"state": "enforced", "version": 1, "error": None, "since": None}
    assert sorted(p.name for p in (locked.policies / request_id).iterdir()) == ["v1"]  # no staging dir, no half v2
    raw = locked.client("acme").chat.completions.with_raw_response.create(
        model=MODEL_NAME, max_tokens=1, messages=[{"role": "user", "content": "Who is Edmund Blackadder?"}])
    assert raw.headers["x-guard-action"] == "refuse"
    subprocess.run(["mount", "-o", "remount,size=64m", str(locked.policies)], check=True)
    version = admin.post(f"/unlearning-requests/{request_id}/recompile").json()["version"]
    locked.wait(request_id, version, timeout=180)
    admin.delete(f"/unlearning-requests/{request_id}")


def test_v1_needs_a_client_key_and_failures_are_audited(locked: Locked) -> None:
    url = locked.server.v1 + "/chat/completions"
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}):
        r = httpx.post(url, json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=locked.server.v1, api_key="wrong", max_retries=0).models.list()
    assert [m.id for m in locked.client("acme").models.list().data] == [MODEL_NAME]
    reply = locked.client("beta").chat.completions.create(model=MODEL_NAME, max_tokens=4, temperature=0,
                                                          messages=[{"role": "user", "content": "Hello"}])
    assert reply.choices[0].message.content
    failures = audit_rows(locked, "auth-failed")
    assert {a["detail"]["reason"] for a in failures} >= {"missing", "invalid"}
    assert all(KEYS["acme"] not in json.dumps(a) and "nope" not in json.dumps(a) for a in failures)


def test_policies_scoped_to_a_tenant_apply_to_that_tenant_only(locked: Locked) -> None:
    admin = locked.admin
    r = admin.post("/unlearning-requests", json={"target": "Sherlock Holmes", "aliases": ["Baker Street"],
                                                 "action": "refuse", "scope": {"api_keys": ["acme"]},
                                                 "strength": {"expand_knowledge": False}})
    assert r.status_code == 202, r.text
    request_id = r.json()["id"]
    try:
        locked.wait(request_id)
        ask = [{"role": "user", "content": "Who is Sherlock Holmes?"}]
        acme = locked.client("acme").chat.completions.create(model=MODEL_NAME, messages=ask, max_tokens=8)
        beta = locked.client("beta").chat.completions.create(model=MODEL_NAME, messages=ask, max_tokens=8)
        assert acme.choices[0].finish_reason == "content_filter"
        assert beta.choices[0].finish_reason != "content_filter"
        unknown = admin.post("/unlearning-requests", json={"target": "X", "scope": {"api_keys": [KEYS["acme"]]}})
        assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_tenant"
        metrics = httpx.get(locked.server.base_url + "/metrics", headers=ADMIN).text
        assert 'decision="refuse",endpoint="chat",tenant="acme"' in metrics
        assert 'tenant="beta"' in metrics and KEYS["acme"] not in metrics
        decisions = audit_rows(locked, "guard-decision")
        assert any(a["actor"] == "acme" and a["detail"]["action"] == "refuse" for a in decisions)
    finally:
        admin.delete(f"/unlearning-requests/{request_id}")


def test_metrics_and_docs_need_a_token(locked: Locked) -> None:
    base = locked.server.base_url
    for path in ("/metrics", "/openapi.json", "/docs", "/redoc"):
        assert httpx.get(base + path).status_code == 401, path
        assert httpx.get(base + path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
        assert httpx.get(base + path, headers={"Authorization": f"Bearer {VIEWER_TOKEN}"}).status_code == 200, path
    assert httpx.get(base + "/health").status_code == 200  # probes stay open


def _case_headers(path: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS['acme'] if path.startswith('/v1') else ADMIN_TOKEN}"}


def _bounded(case) -> None:
    """Keep generation short (the fuzz is about input handling, not decoding): at most 2 tokens."""
    if isinstance(case.body, dict):
        for key in ("max_tokens", "max_completion_tokens"):
            if isinstance(case.body.get(key), int) and case.body[key] > 2:
                case.body[key] = 2
        if case.operation.path.startswith("/v1") and "max_tokens" not in case.body:
            case.body["max_tokens"] = 2
        if isinstance(case.body.get("n"), int) and case.body["n"] > 2:
            case.body["n"] = 2


def _fuzz(operation, mode, base_url: str, failures: list[str], calls: list[int]) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=12, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        _bounded(case)
        response = case.call(base_url=base_url, headers=_case_headers(case.operation.path), timeout=120)
        calls.append(response.status_code)
        label = f"{case.method} {case.operation.path} {mode.value}: {response.status_code}"
        if response.status_code >= 500:
            failures.append(f"{label} {response.text[:300]}")
        elif response.status_code >= 400:
            try:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}
            except Exception:
                failures.append(f"{label} not an OpenAI error body: {response.text[:300]}")

    try:
        run()
    except Unsatisfiable:  # no invalid input exists for an operation without parameters (GET /v1/models)
        assert mode.value == "negative", operation.path


def test_schema_fuzz_finds_no_server_error(locked: Locked) -> None:
    """schemathesis over every /v1 and /admin/v1 operation of the server's own OpenAPI schema, valid and invalid
    input, a bounded number of examples each: no response >= 500, every error in OpenAI's shape."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(locked.server.base_url + "/openapi.json", headers=ADMIN)
    failures: list[str] = []
    calls: list[int] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.startswith(("/v1", "/admin/v1")):
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz(operation, mode, locked.server.base_url, failures, calls)
    created = [r["id"] for r in locked.admin.get("/unlearning-requests").json() if r["status"] not in
               ("revoked", "expired")]
    for request_id in created:
        locked.admin.delete(f"/unlearning-requests/{request_id}")
    assert len(calls) >= 100 and not failures, failures


def test_a_chunked_body_over_the_cap_is_refused_while_it_streams_in(locked: Locked) -> None:
    port = int(locked.server.base_url.rsplit(":", 1)[1])
    chunk = b"x" * 65536
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    sent = 0
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /admin/v1/unlearning-requests HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\ntransfer-encoding: chunked\r\n\r\n")
        while sent < 200 * 1024 * 1024:
            if select.select([s], [], [], 0)[0]:
                break
            try:
                s.sendall(frame)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(chunk)
        reply = read_response(s)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"request_too_large" in reply
    assert sent < 32 * 1024 * 1024, sent  # refused near the 4 MiB cap, not after reading 200 MB
    assert httpx.get(locked.server.base_url + "/health").status_code == 200


def test_the_event_loop_keeps_serving_while_the_store_is_locked(locked: Locked) -> None:
    """Another process holds the store's write lock for longer than the busy timeout: /health and a running
    stream keep flowing, an admin write answers 503 with Retry-After, and the store recovers by itself.

    A store call on the event loop would stall /health and the stream by the whole 1 s busy timeout, each time,
    so that is the bound; only the stream's gaps that end while the lock is held are judged, and one slow /health
    of many is allowed: CI once saw a 2.65 s stream gap, and a run here a first /health of 0.79 s, that no
    server-side trace reproduced (the test process's own garbage collector after the fuzz, or the 2 cores). The
    collector runs before the stream starts and is paused until the lock is released: at the end of CI's full
    suite one collection held this process for ~6 s after the stream's first chunk, the server finished the
    stream meanwhile, and no chunk was left to arrive while the lock was held."""
    store = locked.server.data_dir / "var" / "guard.sqlite3"
    stream_gaps: list[tuple[float, float]] = []  # (when it ended, the gap)
    health: list[float] = []
    started = threading.Event()

    def stream() -> None:
        last = None
        for _ in locked.client("acme").chat.completions.create(
                model=MODEL_NAME, messages=[{"role": "user", "content": "Count to one hundred."}], max_tokens=240,
                temperature=0, stream=True, extra_body={"ignore_eos": True}):
            now = time.monotonic()
            if last is not None:
                stream_gaps.append((now, now - last))
            last = now
            started.set()

    gc.collect()
    gc.disable()
    holder = sqlite3.connect(store, isolation_level=None, timeout=5)
    try:
        worker = threading.Thread(target=stream)
        worker.start()
        assert started.wait(120)
        holder.execute("BEGIN EXCLUSIVE")
        locked_at = time.monotonic()
        write = {}

        def post() -> None:
            write["r"] = locked.admin.post("/unlearning-requests", json={"target": "Locked Out"})

        writer = threading.Thread(target=post)
        writer.start()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline or len(health) < 10:  # 3 s and ten probes while locked (a loaded box)
            began = time.monotonic()
            assert httpx.get(locked.server.base_url + "/health", timeout=5).status_code == 200
            health.append(time.monotonic() - began)
            time.sleep(0.1)
        writer.join(30)
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
        released_at = time.monotonic()
        gc.enable()
    worker.join(120)
    assert write["r"].status_code == 503 and write["r"].headers["retry-after"], write["r"].text
    assert write["r"].json()["error"]["code"] == "store_unavailable"
    assert len(health) >= 10 and max(health) < 1.0 and sorted(health)[-2] < 0.5, health
    during = [gap for end, gap in stream_gaps if locked_at < end <= released_at]
    assert len(during) >= 10 and max(during) < 1.0, (during, max(gap for _, gap in stream_gaps))
    after = locked.admin.post("/unlearning-requests", json={"target": "Locked Out",
                                                            "strength": {"expand_knowledge": False}})
    assert after.status_code == 202
    locked.admin.delete(f"/unlearning-requests/{after.json()['id']}")


def _artifact(body: dict) -> Path:
    return Path(next(v for v in body["versions"] if v["version"] == body["active_version"])["artifact_dir"])


def test_kill_9_mid_compile_then_a_restart_on_artifacts_it_cannot_trust(locked: Locked) -> None:
    """The server is killed with -9 while a knowledge-expansion version compiles, and restarted on the same store
    and artifacts, two of which it cannot trust (a tampered file; a version compiled for another tokenizer).

    From test_faults' kill -9 test: the staging dir the killed compile left is gone after the restart, the version
    compiles to completion there (the killed lease runs out), and only published, verified folders are loaded.
    From test_security's unloadable test (it stopped the server gracefully; the kill is the harder case): the
    server refuses what the untrusted policies apply to (they are scoped to tenant beta: what fails closed refuses
    what it applies to and nothing else), says so in /health, metrics and the admin API, retries every poll, and
    enforces again once the file is back or the request is recompiled. From test_restart.py: a policy whose files
    are intact is enforced from the restart's first request, without compiling anything again."""
    admin = locked.admin
    r = admin.post("/unlearning-requests", json={"target": "Harry Potter", "aliases": ["J.K. Rowling", "Hogwarts"],
                                                 "action": "refuse", "strength": {"expand_knowledge": False}})
    intact = locked.wait(r.json()["id"])
    ids = {}
    for name in ("Zorblax Quinterra", "Velmora Tesk"):
        r = admin.post("/unlearning-requests", json={"target": name, "action": "steer", "scope": {"api_keys": ["beta"]},
                                                     "strength": {"expand_knowledge": False}})
        ids[name] = locked.wait(r.json()["id"])
    tampered, foreign = ids["Zorblax Quinterra"], ids["Velmora Tesk"]
    faiss_file = _artifact(tampered) / "classifier.faiss"
    original = faiss_file.read_bytes()
    manifest_file = _artifact(foreign) / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["tokenizer"]["tokenizer_json_sha256"] = "0" * 64

    r = admin.post("/unlearning-requests", json={"target": "Dorothy Vaughan", "kind": "entity", "action": "refuse",
                                                 "description": "A NASA mathematician and programmer."})
    dorothy = r.json()["id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = admin.get(f"/unlearning-requests/{dorothy}").json()
        if body["latest_version"] == 2 and any(v["version"] == 2 and v["status"] == "compiling"
                                               for v in body["versions"]):
            break
        time.sleep(0.01)
    # a temp dir as a killed compile leaves it (the expansion asks the model first; it may not have one yet)
    policy_dir = locked.policies / dorothy
    killed = f".staging-{os.uname().nodename.replace('-', '_')}-{locked.server.proc.pid}-"
    (policy_dir / f"{killed}v2-compile-x").mkdir()
    locked.crash()
    faiss_file.write_bytes(original[:-8] + b"tampered")
    manifest_file.write_text(json.dumps(manifest))
    locked.restart()
    admin = locked.admin

    raw = locked.client("acme").chat.completions.with_raw_response.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Who wrote Harry Potter?"}], temperature=0,
        max_tokens=30)
    assert raw.parse().choices[0].finish_reason == "content_filter"
    listed = raw.headers["x-guard-policies"].split(",")
    assert intact["id"] in listed and tampered["id"] not in listed and foreign["id"] not in listed, listed
    active = {p["id"]: p for p in admin.get("/policies/active").json()}
    assert active[intact["id"]]["state"] == "enforced" and active[intact["id"]]["version"] == 1
    detail = admin.get(f"/unlearning-requests/{intact['id']}").json()
    assert {**detail["enforcement"], "since": None} == {"state": "enforced", "version": 1, "error": None, "since": None}
    assert [v["version"] for v in detail["versions"]] == [1]  # loaded, not compiled again

    # the killed process's dirs are gone; the new one may already be compiling v2 in its own (the lease is 3 s)
    assert not list(policy_dir.glob(f"{killed}*"))
    body = locked.wait(dorothy, 2, timeout=180)
    assert {v["version"]: v["status"] for v in body["versions"]}[2] == "active", body["versions"]
    assert sorted(p.name for p in policy_dir.iterdir()) == ["v1", "v2"]
    raw = locked.client("acme").chat.completions.with_raw_response.create(
        model=MODEL_NAME, max_tokens=1, messages=[{"role": "user", "content": "Who was Dorothy Vaughan?"}])
    assert raw.headers["x-guard-action"] == "refuse"

    health = httpx.get(locked.server.base_url + "/health").json()
    assert health["status"] == "degraded"
    assert set(health["failed_closed_policies"]) == {tampered["id"], foreign["id"]}
    france = [{"role": "user", "content": "What is the capital of France?"}]
    chat = locked.client("beta").chat.completions.create(model=MODEL_NAME, max_tokens=8, messages=france)
    assert chat.choices[0].finish_reason == "content_filter"  # both apply to everything beta sends: refused
    chat = locked.client("acme").chat.completions.create(model=MODEL_NAME, max_tokens=8, messages=france)
    assert chat.choices[0].finish_reason != "content_filter"  # neither applies to acme
    metrics = httpx.get(locked.server.base_url + "/metrics", headers=ADMIN).text
    assert re.search(r"guard_policies_failed_closed(\{[^}]*\})? 2\.0", metrics), metrics
    assert 'reason="failed_closed"' in metrics
    detail = admin.get(f"/unlearning-requests/{tampered['id']}").json()
    assert detail["enforcement"]["state"] == "failed_closed" and "classifier.faiss" in detail["enforcement"]["error"]
    assert "classifier.faiss" in detail["last_error"]
    detail = admin.get(f"/unlearning-requests/{foreign['id']}").json()
    assert "another tokenizer" in detail["enforcement"]["error"]
    assert {a["request_id"] for a in audit_rows(locked, "load-failed")} >= {tampered["id"], foreign["id"]}

    faiss_file.write_bytes(original)  # retried every poll: back without a restart
    locked.wait(tampered["id"], tampered["active_version"])
    out = subprocess.run([sys.executable, "-m", "guard_service.cli", "policies", "recompile", foreign["id"]],
                         env=locked.server.env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    locked.wait(foreign["id"], foreign["active_version"] + 1)
    assert httpx.get(locked.server.base_url + "/health").json()["status"] == "ok"
    chat = locked.client("beta").chat.completions.create(model=MODEL_NAME, max_tokens=8, messages=france)
    assert chat.choices[0].finish_reason != "content_filter"
    for body in (tampered, foreign, intact, {"id": dorothy}):
        admin.delete(f"/unlearning-requests/{body['id']}")


def test_the_audit_log_is_append_only_and_tampering_is_detected(locked: Locked) -> None:
    env = locked.server.env
    verify = [sys.executable, "-m", "guard_service.cli", "audit", "verify"]
    ok = subprocess.run(verify, env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "intact" in ok.stdout, ok.stdout + ok.stderr
    db = sqlite3.connect(locked.server.data_dir / "var" / "guard.sqlite3", isolation_level=None)
    for statement in ("UPDATE audit SET actor = 'someone else' WHERE seq = 2", "DELETE FROM audit WHERE seq = 3"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(statement)
    # Someone with the file itself can drop the trigger; the chain still gives them away.
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET actor = 'someone else' WHERE seq = 2")
    db.close()
    broken = subprocess.run(verify, env=env, capture_output=True, text=True)
    assert broken.returncode == 1 and "row 2" in broken.stderr, broken.stdout + broken.stderr


def test_a_dead_engine_worker_fails_requests_with_503_and_the_process_exits_nonzero(locked: Locked) -> None:
    """(From test_faults, where it had a server of its own: the last test here ends this module's server.)"""
    server = locked.server
    stream = iter(locked.client("acme").chat.completions.create(stream=True, **LONG))
    next(stream)
    workers = [p for p in psutil.Process(server.proc.pid).children(recursive=True)
               if "Worker" in p.name() or any("Worker" in part for part in p.cmdline())]
    assert workers, [(p.name(), p.cmdline()) for p in psutil.Process(server.proc.pid).children(recursive=True)]
    for worker in workers:
        worker.kill()
    killed = time.monotonic()
    finish = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            finish += [c.finish_reason for c in chunk.choices if c.finish_reason]
    assert finish == [], "a stream cut by the engine's death must not look finished"
    assert "engine" in str(caught.value)
    health = None
    while time.monotonic() - killed < 30:
        try:
            health = httpx.get(server.base_url + "/health", timeout=2)
        except httpx.TransportError:  # already exiting
            break
        if health.status_code == 503:
            assert health.json()["error"]["code"] == "engine_dead"
            break
        time.sleep(0.05)
    print(f"engine worker killed: health 503 / stream error after {time.monotonic() - killed:.2f} s")
    assert server.proc.wait(90) not in (0, None), server.log_tail()
