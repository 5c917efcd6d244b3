"""Faults against the real service. The servers these tests end share a life, as a supervised process would:
one is started with its artifacts on a tiny tmpfs; a full disk fails a version and keeps the last; then it is
killed with -9 mid-compile, and a restart on the same data finishes the compile and never loads a half-written
version; then that server's engine worker is killed, which it reports at once and exits non-zero for its
supervisor. A server that cannot start exits non-zero too. (SIGTERM's drain is tested on the soak's server,
the PostgreSQL outage on the replicas: each server start costs half a minute.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from bench.processes import launch_server, stop_servers
from tests.conftest import ADMIN_TOKEN, MODEL_NAME, Server, start_server, stop_server, wait_status

pytestmark = pytest.mark.own_engine
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LONG = {"model": MODEL_NAME, "temperature": 0, "max_tokens": 200, "extra_body": {"ignore_eos": True},
        "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]}


def _client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


def _admin(server: Server, timeout: float = 60) -> httpx.Client:
    return httpx.Client(base_url=server.base_url + "/admin/v1", headers=ADMIN, timeout=timeout)


@dataclass
class Doomed:
    """The server the fault tests below share and end; each test takes whichever is running (a fresh one on the
    same data and artifacts if the last test ended it, or failed before it could)."""

    root: Path
    env: dict[str, str]
    policies: Path  # the artifacts folder (a 2 MiB tmpfs when this process may mount one)
    tmpfs: bool
    data_dir: Path | None = None
    runs: list[Server] = field(default_factory=list)

    def current(self) -> Server:
        if not self.runs or self.runs[-1].proc.poll() is not None:
            self.runs.append(self.start())
        return self.runs[-1]

    def start(self) -> Server:
        workdir = self.root / f"run{len(self.runs)}"
        workdir.mkdir()
        server = start_server(workdir, self.env, data_dir=self.data_dir)
        self.data_dir = server.data_dir
        return server


@pytest.fixture(scope="module")
def doomed(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Doomed]:
    root = tmp_path_factory.mktemp("doomed")
    policies = root / "policies"
    policies.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(policies)],
                             capture_output=True).returncode == 0
    holder = Doomed(root, {"GUARD_POLICIES_DIR": str(policies), "GUARD_MAX_MODEL_LEN": "512",
                           "GUARD_COMPILE_LEASE_S": "3"}, policies, mounted)
    try:
        yield holder
    finally:
        stop_servers(holder.runs)
        if mounted:
            subprocess.run(["umount", "-l", str(policies)], capture_output=True)


def test_disk_full_while_writing_artifacts_fails_the_version_and_keeps_the_last(doomed: Doomed) -> None:
    """The artifacts on a 2 MiB tmpfs: a name-only version fits, one with ~1.5 MB of protected text does not. It
    fails with the OS's reason, the previous version stays enforced, nothing half-written is left; once there is
    room again a recompile succeeds."""
    import random

    if not doomed.tmpfs:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    server = doomed.current()
    admin = _admin(server, timeout=120)
    r = admin.post("/unlearning-requests", json={"target": "Edmund Blackadder", "action": "refuse",
                                                 "strength": {"expand_knowledge": False}})
    request_id = r.json()["id"]
    wait_status(admin, request_id, "active", version=1)
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
    assert body["enforcement"] == {"state": "enforced", "version": 1, "error": None}
    assert sorted(p.name for p in (doomed.policies / request_id).iterdir()) == ["v1"]  # no staging dir, no half v2
    raw = _client(server).chat.completions.with_raw_response.create(
        model=MODEL_NAME, max_tokens=1, messages=[{"role": "user", "content": "Who is Edmund Blackadder?"}])
    assert raw.headers["x-guard-action"] == "refuse"
    subprocess.run(["mount", "-o", "remount,size=64m", str(doomed.policies)], check=True)
    version = admin.post(f"/unlearning-requests/{request_id}/recompile").json()["version"]
    wait_status(admin, request_id, "active", version=version, timeout=180)
    admin.delete(f"/unlearning-requests/{request_id}")


def test_kill_9_mid_compile_restarts_into_a_finished_compile_and_no_temp_dir(doomed: Doomed) -> None:
    """kill -9 while the knowledge-expansion version compiles (the process group: API and engine). The staging
    dir it was writing is gone after the restart, the version compiles to completion there (the killed lease
    runs out), and only published, verified folders are ever loaded."""
    server = doomed.current()
    admin = _admin(server)
    r = admin.post("/unlearning-requests", json={"target": "Dorothy Vaughan", "kind": "entity", "action": "refuse",
                                                 "description": "A NASA mathematician and programmer."})
    request_id = r.json()["id"]
    policy_dir = doomed.policies / request_id
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = admin.get(f"/unlearning-requests/{request_id}").json()
        if body["latest_version"] == 2 and any(v["version"] == 2 and v["status"] == "compiling"
                                               for v in body["versions"]):
            break
        time.sleep(0.01)
    # a temp dir as a killed compile leaves it (the expansion asks the model first; it may not have one yet)
    (policy_dir / f".staging-{os.uname().nodename.replace('-', '_')}-{server.proc.pid}-v2-compile-x").mkdir()
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(30)
    again = doomed.current()  # a restart on the same data and artifacts
    assert again is not server
    assert not list(policy_dir.glob(".staging-*"))
    admin = _admin(again)
    body = wait_status(admin, request_id, "active", version=2, timeout=180)
    assert {v["version"]: v["status"] for v in body["versions"]}[2] == "active", body["versions"]
    assert sorted(p.name for p in policy_dir.iterdir()) == ["v1", "v2"]
    raw = _client(again).chat.completions.with_raw_response.create(
        model=MODEL_NAME, max_tokens=1, messages=[{"role": "user", "content": "Who was Dorothy Vaughan?"}])
    assert raw.headers["x-guard-action"] == "refuse"
    admin.delete(f"/unlearning-requests/{request_id}")


def test_a_dead_engine_worker_fails_requests_with_503_and_the_process_exits_nonzero(doomed: Doomed) -> None:
    server = doomed.current()
    stream = iter(_client(server).chat.completions.create(stream=True, **LONG))
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


def test_an_engine_that_cannot_start_makes_the_process_exit_nonzero(model_dir: Path, tmp_path: Path) -> None:
    """A setting the engine rejects (a context longer than the model's): the process exits non-zero, as when a
    running engine dies, so that its supervisor restarts it or shows the crash loop; the log says why."""
    server = launch_server(tmp_path, {"GUARD_MAX_MODEL_LEN": "1000000"})
    try:
        code = server.proc.wait(180)
        assert code == 3, server.log_tail()
        assert "engine failed to start" in server.log.read_text(errors="replace")
    finally:
        stop_server(server)


def test_expiry_stops_enforcement_on_time_while_a_compile_runs(server: Server, admin: httpx.Client) -> None:
    """A policy expiring a few seconds ahead, while the compiler is busy with a long compile: enforcement stops
    at `expires_at` (the registry checks it on every request), and the store marks it expired soon after."""
    from datetime import UTC, datetime, timedelta

    r = admin.post("/unlearning-requests", json={"target": "Baldrick Turnip", "action": "refuse",
                                                 "strength": {"expand_knowledge": False}})
    request_id = r.json()["id"]
    wait_status(admin, request_id, "active", version=1)
    expires = datetime.now(UTC) + timedelta(seconds=8)
    version = admin.patch(f"/unlearning-requests/{request_id}", json={"expires_at": expires.isoformat()}).json()
    wait_status(admin, request_id, "active", version=version["version"])
    question = {"model": MODEL_NAME, "max_tokens": 1,
                "messages": [{"role": "user", "content": "Who is Baldrick Turnip?"}]}

    def action() -> str:
        return _client(server).chat.completions.with_raw_response.create(**question).headers["x-guard-action"]

    def at(past: float, call: Callable[[], Any]) -> tuple[float, Any, float]:
        """`call` as soon as `expires + past` is reached: (seconds after expires_at it began, its result,
        seconds it took). Each on its own thread: under the compile's load a response can take seconds, which
        must not delay the next probe."""
        while datetime.now(UTC) < expires + timedelta(seconds=past):
            time.sleep(0.005)
        sent, began = datetime.now(UTC), time.perf_counter()
        return (sent - expires).total_seconds(), call(), time.perf_counter() - began

    assert action() == "refuse"
    while datetime.now(UTC) < expires - timedelta(seconds=3):
        time.sleep(0.05)
    # the compiler busy across the expiry: ~1.7 MB of protected text, then the knowledge expansion
    ledger = " ".join(f"line {k} of a long protected ledger" for k in range(48_000))
    busy = admin.post("/unlearning-requests", json={
        "target": "Percy Pigeon", "kind": "entity", "description": "A pigeon fancier in a comedy.",
        "action": "steer", "protected_documents": [ledger]})
    assert busy.status_code == 202, busy.text
    busy_id = busy.json()["id"]

    def versions() -> list[str]:
        return [v["status"] for v in admin.get(f"/unlearning-requests/{busy_id}").json()["versions"]]

    # The policy is checked when a request arrives: judged by when each was sent, not when it was answered.
    with ThreadPoolExecutor(3) as pool:
        before, after, compiling = (pool.submit(at, past, call) for past, call in
                                    ((-1.0, action), (0.0, action), (0.0, versions)))
        before, after, compiling = before.result(), after.result(), compiling.result()
    print(f"expiry: sent {before[0]:.3f} s after expires_at: {before[1]} ({before[2]:.3f} s); "
          f"sent {after[0]:.3f} s after: {after[1]} ({after[2]:.3f} s); the other request's versions: {compiling[1]}")
    assert before[0] < -0.8 and before[1] == "refuse"
    assert 0 <= after[0] < 0.1 and after[1] == "pass"
    assert "compiling" in compiling[1]
    assert admin.get(f"/unlearning-requests/{request_id}").json()["enforcement"]["state"] == "not_enforced"
    wait_status(admin, request_id, "expired", timeout=60)
    admin.delete(f"/unlearning-requests/{busy_id}")


def test_idle_connections_and_a_slow_reader_do_not_hold_up_other_clients(server: Server) -> None:
    """200 connections that send nothing and one stream read a few bytes at a time: other clients' requests and
    streams complete as usual, the slow stream still ends properly, and the idle connections are closed once
    their request head is overdue (GUARD_HEAD_TIMEOUT_S; the session server runs with 5 s), so they cannot pile
    up to the fd limit. A connection idle between two requests is not one of them: it stays open for the next
    request (GUARD_KEEP_ALIVE_S, 75 s: past a client's own 5 s, so a client never reuses one the server is
    closing)."""
    import socket

    from tests.conftest import read_response

    host, port = server.base_url.removeprefix("http://").split(":")
    head_timeout = float(server.env.get("GUARD_HEAD_TIMEOUT_S", "15"))
    opened = time.monotonic()
    idle = [socket.create_connection((host, int(port)), timeout=30) for _ in range(200)]
    kept = socket.create_connection((host, int(port)), timeout=30)
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    kept.sendall(health)
    assert read_response(kept).startswith(b"HTTP/1.1 200")
    slow = socket.create_connection((host, int(port)), timeout=60)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = json.dumps({"model": MODEL_NAME, "max_tokens": 120, "stream": True, "ignore_eos": True,
                       "messages": [{"role": "user", "content": "Count slowly from one to fifty."}]})
    slow.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    received = b""
    client = _client(server)
    try:
        for k in range(4):  # others meanwhile: plain and streamed, while the slow reader trickles
            received += slow.recv(32)
            answer = client.chat.completions.create(model=MODEL_NAME, max_tokens=16, messages=[
                {"role": "user", "content": f"Say hello number {k}."}])
            assert answer.choices[0].finish_reason in ("stop", "length")
            chunks = list(client.chat.completions.create(model=MODEL_NAME, max_tokens=16, stream=True, messages=[
                {"role": "user", "content": f"Name a colour, number {k}."}]))
            assert chunks[-1].choices[0].finish_reason in ("stop", "length")
            received += slow.recv(32)
            time.sleep(0.2)
        while b"data: [DONE]" not in received:
            part = slow.recv(65536)
            assert part, received[-300:]
            received += part
        assert b'"finish_reason":"length"' in received
        time.sleep(max(0.0, opened + max(head_timeout, 5.0) + 1 - time.monotonic()))
        closed = 0
        for s in idle:
            s.settimeout(5)
            try:
                closed += s.recv(1) == b""
            except (ConnectionResetError, TimeoutError):
                closed += 0
        assert closed == 200, f"{200 - closed} idle connections still open after the head timeout"
        kept.sendall(health)  # idle for longer than uvicorn's default keep-alive (5 s) and the head timeout
        assert read_response(kept).startswith(b"HTTP/1.1 200")
    finally:
        for s in (*idle, slow, kept):
            s.close()


def test_a_stored_version_past_its_expiry_still_loads() -> None:
    """Found with the expiry test: a stored spec was validated like a new request ("expires_at must be in the
    future"), so a version that expired before the store marked it (a restart, a reload meanwhile) failed to
    load and, failing closed, refused everything it applied to. New requests are still held to the rule."""
    from datetime import UTC, datetime, timedelta

    from pydantic import ValidationError

    from guard_service.policy.request import UnlearningRequest, from_version_spec

    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    spec, _, _ = from_version_spec({"target": "Captain Hook", "expires_at": past})
    assert spec.expires_at is not None and spec.expires_at < datetime.now(UTC)
    with pytest.raises(ValidationError, match="expires_at must be in the future"):
        UnlearningRequest.model_validate({"target": "Captain Hook", "expires_at": past})
