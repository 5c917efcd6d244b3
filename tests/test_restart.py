"""A fresh server process on the same store and artifacts (a restart, or a second replica) enforces every
active policy before its first request, without compiling anything again."""

from __future__ import annotations

import httpx
import openai

from tests.conftest import ADMIN_TOKEN, MODEL_NAME, Server, start_server, stop_server, wait_status


def test_restart_reenforces_active_policies(server: Server, admin: httpx.Client, tmp_path) -> None:
    r = admin.post("/unlearning-requests", json={"target": "Harry Potter", "aliases": ["J.K. Rowling", "Hogwarts"],
                                                 "action": "refuse", "strength": {"expand_knowledge": False}})
    request_id = r.json()["id"]
    wait_status(admin, request_id, "active")
    fresh = start_server(tmp_path, data_dir=server.data_dir, extra_env={"GUARD_GPU_MEMORY_UTILIZATION": "0.2"})
    try:
        client = openai.OpenAI(base_url=fresh.v1, api_key="unused", max_retries=0, timeout=120)
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "Who wrote Harry Potter?"}], temperature=0,
            max_tokens=30)
        answer = raw.parse()
        assert answer.choices[0].finish_reason == "content_filter"
        assert request_id in raw.headers["x-guard-policies"]
        active = httpx.get(fresh.base_url + "/admin/v1/policies/active",
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
        assert request_id in {p["id"] for p in active}
    finally:
        stop_server(fresh)
        admin.delete(f"/unlearning-requests/{request_id}")
