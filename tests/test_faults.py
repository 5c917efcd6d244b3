"""Faults against the real service, each on a server of its own: a stop (SIGTERM) drains what is in flight and
exits 0; a dead engine worker is reported at once and the process exits non-zero for its supervisor; a server
killed mid-compile finishes the compile after a restart and never loads a half-written version."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from bench.processes import launch_server
from tests.conftest import ADMIN_TOKEN, MODEL_NAME, Server, start_server, stop_server, wait_status

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LONG = {"model": MODEL_NAME, "temperature": 0, "max_tokens": 200, "extra_body": {"ignore_eos": True},
        "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]}


def _client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


def _refused(server: Server) -> bool:
    try:
        return httpx.get(server.base_url + "/health", timeout=2).status_code != 200
    except httpx.TransportError:
        return True


def test_sigterm_drains_streams_and_requests_in_flight_then_exits_zero(model_dir: Path, tmp_path: Path) -> None:
    server = start_server(tmp_path, {"GUARD_MAX_MODEL_LEN": "512", "GUARD_DRAIN_S": "60"})
    try:
        client = _client(server)
        stream = iter(client.chat.completions.create(stream=True, **LONG))
        first = next(stream)
        plain: dict = {}
        thread = threading.Thread(target=lambda: plain.update(r=client.chat.completions.create(**LONG)))
        thread.start()
        time.sleep(0.5)  # the non-streaming request is in the engine too
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not _refused(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _refused(server), "still ready after SIGTERM"
        chunks = [first, *stream]
        thread.join(120)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].choices[0].finish_reason == "length" and len(text) > 200, chunks[-1]
        assert plain["r"].choices[0].finish_reason == "length" and plain["r"].usage.completion_tokens == 200
        assert server.proc.wait(90) == 0, server.log_tail()
    finally:
        stop_server(server)


def test_a_dead_engine_worker_fails_requests_with_503_and_the_process_exits_nonzero(
        model_dir: Path, tmp_path: Path) -> None:
    server = start_server(tmp_path, {"GUARD_MAX_MODEL_LEN": "512"})
    try:
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
    finally:
        stop_server(server)


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


def test_kill_9_mid_compile_restarts_into_a_finished_compile_and_no_temp_dir(model_dir: Path, tmp_path: Path) -> None:
    """kill -9 while the knowledge-expansion version compiles (the process group: API and engine). The staging
    dir it was writing is gone after the restart, the version compiles to completion there (the killed lease
    runs out), and only published, verified folders are ever loaded."""
    env = {"GUARD_MAX_MODEL_LEN": "512", "GUARD_COMPILE_LEASE_S": "2"}
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    server = start_server(tmp_path / "one", env)
    admin = httpx.Client(base_url=server.base_url + "/admin/v1", headers=ADMIN, timeout=60)
    r = admin.post("/unlearning-requests", json={"target": "Dorothy Vaughan", "kind": "entity", "action": "refuse",
                                                 "description": "A NASA mathematician and programmer."})
    request_id = r.json()["id"]
    policy_dir = server.data_dir / "policies" / request_id
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
    again = start_server(tmp_path / "two", env, data_dir=server.data_dir)
    try:
        assert not list(policy_dir.glob(".staging-*"))
        admin = httpx.Client(base_url=again.base_url + "/admin/v1", headers=ADMIN, timeout=60)
        body = wait_status(admin, request_id, "active", version=2, timeout=180)
        assert {v["version"]: v["status"] for v in body["versions"]}[2] == "active", body["versions"]
        assert sorted(p.name for p in policy_dir.iterdir()) == ["v1", "v2"]
        raw = _client(again).chat.completions.with_raw_response.create(
            model=MODEL_NAME, max_tokens=1, messages=[{"role": "user", "content": "Who was Dorothy Vaughan?"}])
        assert raw.headers["x-guard-action"] == "refuse"
    finally:
        stop_server(again)


def test_disk_full_while_writing_artifacts_fails_the_version_and_keeps_the_last(
        model_dir: Path, tmp_path: Path) -> None:
    """GUARD_POLICIES_DIR on a 2 MiB tmpfs: a name-only version fits, one with ~1.5 MB of protected text does
    not. It fails with the OS's reason, the previous version stays enforced, nothing half-written is left; once
    there is room again a recompile succeeds."""
    import random
    import subprocess

    mount = tmp_path / "policies"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    server = None
    try:
        server = start_server(tmp_path, {"GUARD_POLICIES_DIR": str(mount), "GUARD_MAX_MODEL_LEN": "512"})
        admin = httpx.Client(base_url=server.base_url + "/admin/v1", headers=ADMIN, timeout=120)
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
        assert sorted(p.name for p in (mount / request_id).iterdir()) == ["v1"]  # no staging dir, no half v2
        raw = _client(server).chat.completions.with_raw_response.create(
            model=MODEL_NAME, max_tokens=1, messages=[{"role": "user", "content": "Who is Edmund Blackadder?"}])
        assert raw.headers["x-guard-action"] == "refuse"
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        version = admin.post(f"/unlearning-requests/{request_id}/recompile").json()["version"]
        wait_status(admin, request_id, "active", version=version, timeout=180)
    finally:
        if server is not None:
            stop_server(server)
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


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
    their request head is overdue (GUARD_HEAD_TIMEOUT_S, 15 s), so they cannot pile up to the fd limit."""
    import socket

    host, port = server.base_url.removeprefix("http://").split(":")
    opened = time.monotonic()
    idle = [socket.create_connection((host, int(port)), timeout=30) for _ in range(200)]
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
        time.sleep(max(0.0, opened + 16 - time.monotonic()))
        closed = 0
        for s in idle:
            s.settimeout(5)
            try:
                closed += s.recv(1) == b""
            except (ConnectionResetError, TimeoutError):
                closed += 0
        assert closed == 200, f"{200 - closed} idle connections still open after the head timeout"
    finally:
        for s in (*idle, slow):
            s.close()


def test_postgres_down_then_back_admin_writes_503_generation_goes_on(model_dir: Path, tmp_path: Path) -> None:
    """The store's server stops for longer than the busy timeout: admin writes answer 503 with Retry-After,
    requests are still guarded by the policies already loaded; once it is back the same process takes writes and
    compiles again, no restart."""
    from bench.processes import fresh_database, local_postgres

    with local_postgres() as pg:
        server = start_server(tmp_path, {"GUARD_STORE_URL": fresh_database(pg.url, "outage"),
                                         "GUARD_STORE_BUSY_TIMEOUT_S": "2", "GUARD_MAX_MODEL_LEN": "512"})
        try:
            admin = httpx.Client(base_url=server.base_url + "/admin/v1", headers=ADMIN, timeout=60)
            r = admin.post("/unlearning-requests", json={"target": "George Darling", "action": "refuse",
                                                         "strength": {"expand_knowledge": False}})
            request_id = r.json()["id"]
            wait_status(admin, request_id, "active", version=1)
            client = _client(server)

            def action(prompt: str) -> str:
                return client.chat.completions.with_raw_response.create(
                    model=MODEL_NAME, max_tokens=4, messages=[{"role": "user", "content": prompt}]
                ).headers["x-guard-action"]

            pg.stop()
            down = admin.post("/unlearning-requests", json={"target": "Mary Darling", "action": "refuse"})
            assert down.status_code == 503 and int(down.headers["retry-after"]) > 0, down.text
            assert down.json()["error"]["code"] and "password" not in down.text
            assert action("Who is George Darling?") == "refuse"
            assert action("What is the capital of France?") == "pass"
            time.sleep(3)  # the registry's and the scheduler's polls fail meanwhile, logged, not fatal
            assert server.proc.poll() is None and httpx.get(server.base_url + "/health").status_code == 200
            pg.start()
            deadline = time.monotonic() + 60
            while (up := admin.post("/unlearning-requests", json={
                    "target": "Mary Darling", "action": "refuse",
                    "strength": {"expand_knowledge": False}})).status_code == 503 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert up.status_code == 202, up.text
            wait_status(admin, up.json()["id"], "active", version=1)
            assert action("Who is Mary Darling?") == "refuse"
        finally:
            stop_server(server)


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
