"""Bad input is a clear 4xx in OpenAI's error shape, stores nothing and leaves no engine bookkeeping behind;
never a 500 (issue #12, item 7)."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.conftest import MODEL_NAME, Server, read_response, wait_status


def assert_error(r: httpx.Response, status: int, fragment: str = "") -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and fragment in err["message"], err
    return err


@pytest.fixture(scope="module")
def gandalf(admin: httpx.Client) -> dict:
    r = admin.post("/unlearning-requests", json={"target": "Gandalf the Grey", "aliases": ["Mithrandir"],
                                                 "strength": {"expand_knowledge": False}})
    body = wait_status(admin, r.json()["id"], "active")
    yield body
    admin.delete(f"/unlearning-requests/{body['id']}")


@pytest.mark.parametrize(("change", "fragment"), [
    ({"description": "x" * 6000}, "description"),
    ({"aliases": [f"alias {i}" for i in range(300)]}, "aliases"),
    ({"expires_at": (datetime.now(UTC) - timedelta(days=1)).isoformat()}, "expires_at"),
    ({"facts": [""]}, "facts"),
    ({"protected_paths": ["a\x00b"]}, "protected_paths"),
])
def test_patch_is_validated_like_post(admin: httpx.Client, gandalf: dict, change: dict, fragment: str) -> None:
    before = admin.get(f"/unlearning-requests/{gandalf['id']}").json()["latest_version"]
    assert_error(admin.patch(f"/unlearning-requests/{gandalf['id']}", json=change), 422, fragment)
    assert admin.get(f"/unlearning-requests/{gandalf['id']}").json()["latest_version"] == before


def test_patch_on_an_ended_request_is_a_conflict(admin: httpx.Client) -> None:
    request_id = admin.post("/unlearning-requests", json={"target": "Radagast", "strength": {
        "expand_knowledge": False}}).json()["id"]
    admin.delete(f"/unlearning-requests/{request_id}")
    assert_error(admin.patch(f"/unlearning-requests/{request_id}", json={"description": "x" * 6000}), 409,
                 "revoked")
    assert_error(admin.post(f"/unlearning-requests/{request_id}/recompile"), 409, "revoked")


@pytest.mark.parametrize("body", [
    {"target": "Bad \udc80 name"},
    {"target": "ok", "protected_paths": ["x\x00y"]},
    {"target": "ok", "protected_paths": ["b" * 290]},  # a name longer than the file system allows
])
def test_admin_text_that_cannot_be_stored_is_a_422(admin: httpx.Client, body: dict) -> None:
    before = len(admin.get("/unlearning-requests").json())
    r = admin.post("/unlearning-requests", content=_json_with_surrogates(body),
                   headers={"content-type": "application/json"})
    assert_error(r, 422)
    assert len(admin.get("/unlearning-requests").json()) == before


def _json_with_surrogates(body: dict) -> bytes:
    return json.dumps(body, ensure_ascii=True).encode()  # ensure_ascii keeps a lone surrogate as \udc80


@pytest.mark.parametrize(("path", "body", "status", "fragment"), [
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "seed": 2**64}, 400, "seed"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "seed": -(2**63) - 1}, 400, "seed"),
    ("/completions", {"prompt": "ab\ud800c"}, 400, "Unicode"),
    ("/completions", {"prompt": ["fine", "bad \udfff"]}, 400, "Unicode"),
    ("/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]}, 400,
     "Unicode"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stop": ["\ud800"]}, 400, "Unicode"),
    ("/completions", {"prompt": [f"prompt {i}" for i in range(65)]}, 400, "prompts"),
    ("/completions", {"prompt": [f"prompt {i}" for i in range(50)], "n": 3}, 400, "choices"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "continue_final_message": True,
                           "add_generation_prompt": False}, 400, "assistant"),
])
def test_openai_bad_input_is_a_400_and_leaves_nothing_behind(server: Server, path: str, body: dict, status: int,
                                                              fragment: str) -> None:
    r = httpx.post(server.v1 + path, content=_json_with_surrogates({"model": MODEL_NAME, "max_tokens": 2, **body}),
                   headers={"content-type": "application/json"}, timeout=60)
    assert_error(r, status, fragment)
    assert httpx.get(server.base_url + "/health").json()["unfinished_requests"] == 0


def test_extreme_valid_seeds_are_served(server: Server) -> None:
    for seed in (-(2**63), 2**63 - 1):
        r = httpx.post(server.v1 + "/chat/completions", timeout=60, json={
            "model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "seed": seed,
            "temperature": 1.0})
        assert r.status_code == 200, r.text
    assert httpx.get(server.base_url + "/health").json()["unfinished_requests"] == 0


def test_provenance_lookup_is_capped(admin: httpx.Client) -> None:
    assert_error(admin.post("/provenance/lookup", json={"text": "x " * 150_000}), 422, "at most")


def test_declared_oversized_body_is_refused_before_reading(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", int(server.base_url.rsplit(":", 1)[1])), timeout=30) as s:
        # Only the head: the answer must come before any of the 200 MB is sent (and with no unread bytes the
        # server's close cannot reset the connection under the reply).
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: 200000000\r\n\r\n")
        reply = read_response(s).decode()
    assert reply.startswith("HTTP/1.1 413") and "request_too_large" in reply, reply


def test_internal_errors_never_echo_exception_text() -> None:
    """The 500 handler names an error id, never the exception (unit-level: no route should raise)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from guard_service.api.errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret path /srv/policies/pol_x/v1 and target Harry Potter")

    r = TestClient(app, raise_server_exceptions=False).get("/boom")
    err = assert_error(r, 500, "error id")
    assert "secret" not in err["message"] and "Harry" not in err["message"]
