"""Faults against the real service: a server that cannot start exits non-zero for its supervisor; expiry is
exact while a compile runs; idle and slow connections hold up no one. The faults that end a server run on
servers that end anyway, since each start costs half a minute: a full disk, kill -9 mid-compile and a dead
engine worker on test_security's server (whose restart they share), SIGTERM's drain at the end of the soak on
the session's server, the PostgreSQL outage on the replicas."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from bench.processes import launch_server
from tests.conftest import ADMIN_TOKEN, MODEL_NAME, Server, stop_server, wait_status

pytestmark = pytest.mark.own_engine
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module", autouse=True)
def unstartable(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Launched as the module begins, judged at its end: its ten seconds of imports overlap the other tests."""
    server = launch_server(tmp_path_factory.mktemp("unstartable"), {"GUARD_MAX_MODEL_LEN": "1000000"})
    yield server
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
    stopped = {"state": "not_enforced", "version": version["version"], "error": None, "since": expires.timestamp()}
    assert admin.get(f"/unlearning-requests/{request_id}").json()["enforcement"] == stopped
    wait_status(admin, request_id, "expired", timeout=60)
    assert admin.get(f"/unlearning-requests/{request_id}").json()["enforcement"] == stopped  # still that instant
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


def test_an_engine_that_cannot_start_makes_the_process_exit_nonzero(unstartable: Server) -> None:
    """A setting the engine rejects (a context longer than the model's): the process exits non-zero, as when a
    running engine dies, so that its supervisor restarts it or shows the crash loop; the log says why."""
    assert unstartable.proc.wait(180) == 3, unstartable.log_tail()
    assert "engine failed to start" in unstartable.log.read_text(errors="replace")
