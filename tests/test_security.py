"""A locked-down server (client API keys, /metrics and /docs behind tokens, a small body cap and store busy
timeout): tenants, authentication and its audit, a schema fuzz with zero 5xx, a chunked oversized body, the
event loop under a held store lock, failing closed in the API process, recompiling, and the audit chain."""

from __future__ import annotations

import gc
import json
import re
import select
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import ADMIN_TOKEN, MODEL_NAME, VIEWER_TOKEN, read_response, start_server, stop_server

KEYS = {"acme": "key-acme-1234", "beta": "key-beta-5678"}
pytestmark = pytest.mark.own_engine
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BODY_CAP = 4 * 1024 * 1024
ENV = {"GUARD_API_KEYS": json.dumps(KEYS), "GUARD_METRICS_AUTH": "1", "GUARD_DOCS_AUTH": "1",
       "GUARD_MAX_MODEL_LEN": "512", "GUARD_GPU_MEMORY_UTILIZATION": "0.15", "GUARD_MAX_REQUEST_BYTES": str(BODY_CAP),
       "GUARD_STORE_BUSY_TIMEOUT_S": "1"}


class Locked:
    """The module's server; a test may restart it on the same data directory."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.server = start_server(workdir, ENV)

    def restart(self) -> None:
        stop_server(self.server)
        self.server = start_server(self.workdir, ENV, data_dir=self.server.data_dir)

    @property
    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.base_url + "/admin/v1", headers=ADMIN, timeout=60)

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
def locked(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Locked:
    holder = Locked(tmp_path_factory.mktemp("locked"))
    yield holder
    stop_server(holder.server)


def audit_rows(locked: Locked, action: str, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = [a for a in locked.admin.get("/audit", params={"limit": 2000}).json() if a["action"] == action]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


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
    collector is paused while the lock is held."""
    store = locked.server.data_dir / "var" / "guard.sqlite3"
    stream_gaps: list[tuple[float, float]] = []  # (when it ended, the gap)
    health: list[float] = []
    started = threading.Event()

    def stream() -> None:
        last = None
        for _ in locked.client("acme").chat.completions.create(
                model=MODEL_NAME, messages=[{"role": "user", "content": "Count to one hundred."}], max_tokens=120,
                temperature=0, stream=True, extra_body={"ignore_eos": True}):
            now = time.monotonic()
            if last is not None:
                stream_gaps.append((now, now - last))
            last = now
            started.set()

    worker = threading.Thread(target=stream)
    worker.start()
    assert started.wait(120)
    gc.collect()
    gc.disable()
    holder = sqlite3.connect(store, isolation_level=None, timeout=5)
    holder.execute("BEGIN EXCLUSIVE")
    locked_at = time.monotonic()
    try:
        write = {}

        def post() -> None:
            write["r"] = locked.admin.post("/unlearning-requests", json={"target": "Locked Out"})

        writer = threading.Thread(target=post)
        writer.start()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            began = time.monotonic()
            assert httpx.get(locked.server.base_url + "/health", timeout=5).status_code == 200
            health.append(time.monotonic() - began)
            time.sleep(0.1)
        writer.join(30)
    finally:
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


def test_unloadable_policies_fail_closed_in_the_api_process_and_recover(locked: Locked) -> None:
    """Restarted on artifacts it cannot trust (a tampered file; a version compiled for another tokenizer), the
    server refuses what those policies apply to, says so in /health, metrics and the admin API, retries every
    poll, and enforces again once the file is back or the request is recompiled. A policy whose files are
    intact is enforced from the restart's first request, without compiling anything again (this was
    test_restart.py, with a server of its own). The unloadable two are scoped to tenant beta: what fails closed
    refuses what it applies to, and nothing else."""
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
    stop_server(locked.server)
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
    assert detail["enforcement"] == {"state": "enforced", "version": 1, "error": None}
    assert [v["version"] for v in detail["versions"]] == [1]  # loaded, not compiled again

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
    for body in (tampered, foreign, intact):
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
