"""The evaluator's view of a running guard-service: the public OpenAI API and the admin API, over HTTP only.

Unguarded answers come from the same server through the audited admin bypass, so "guard off" and "guard on"
differ in nothing but the guard.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, Field
from tqdm.asyncio import tqdm_asyncio

from guard_service.auth import BYPASS_HEADER, DETAIL_HEADER
from guard_service.frontend.summary import GuardSummary, LeakInfo

T = TypeVar("T")


class Answer(BaseModel):
    text: str
    finish_reason: str | None
    action: str = "pass"
    targets: list[str] = Field(default_factory=list, description="policies the classifier matched")
    leaks: list[LeakInfo] = Field(default_factory=list, description="what the output leak detector saw")
    acted: bool = Field(False, description="the output guard ended or steered the answer at a leak")

    @property
    def flagged(self) -> bool:
        """The prompt classifier matched it."""
        return bool(self.targets)

    @property
    def caught(self) -> bool:
        """The guard matched the prompt or acted on the output."""
        return self.flagged or self.acted


class EvalClient:
    def __init__(self, base_url: str, admin_token: str, *, concurrency: int = 16, timeout: float = 600,
                 api_key: str | None = None, stream: bool = False):
        """`stream`: every question is asked streamed, and an answer is the text its chunks delivered."""
        self.admin_token = admin_token
        self.stream = stream
        self.client_auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}  # /v1 with GUARD_API_KEYS
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout,
                                      headers={"Authorization": f"Bearer {admin_token}"})
        self.slots = asyncio.Semaphore(concurrency)
        self.model = ""

    async def __aenter__(self) -> EvalClient:
        r = await self._ok(self.http.get("/v1/models", headers=self.client_auth))
        self.model = r.json()["data"][0]["id"]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    @staticmethod
    async def _ok(call: Awaitable[httpx.Response]) -> httpx.Response:
        r = await call
        if r.status_code >= 400:
            raise RuntimeError(f"{r.request.method} {r.request.url.path} -> {r.status_code}: {r.text[:500]}")
        return r

    async def server_info(self) -> dict[str, Any]:
        return (await self._ok(self.http.get("/version"))).json()

    async def submit(self, spec: dict[str, Any]) -> str:
        r = await self._ok(self.http.post("/admin/v1/unlearning-requests", json=spec))
        return r.json()["id"]

    async def wait_active(self, request_id: str, *, wait_s: float = 900) -> None:
        """Until the request's latest version is the one enforced; a version held for its predicted collateral
        is forced (the audit log records it: the evaluation measures what the policy does, collateral included)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            info = (await self._ok(self.http.get(f"/admin/v1/unlearning-requests/{request_id}"))).json()
            if info["status"] == "failed":
                raise RuntimeError(f"policy for {info['target']!r} failed to compile: {info['last_error']}")
            latest = next((v for v in info["versions"] if v["version"] == info["latest_version"]), {})
            if latest.get("status") == "held":  # over GUARD_MAX_COLLATERAL: an evaluation measures it anyway
                await self._ok(self.http.post(f"/admin/v1/unlearning-requests/{request_id}/versions/"
                                              f"{latest['version']}/activate", json={"force": True}))
                continue
            enforced = info.get("enforcement", {})
            if (info["status"] == "active" and info["active_version"] == info["latest_version"]
                    and enforced.get("state") == "enforced" and enforced.get("version") == info["active_version"]):
                return
            await asyncio.sleep(0.25)
        raise TimeoutError(f"unlearning request {request_id} not active after {wait_s:.0f}s")

    async def revoke(self, request_id: str) -> None:
        await self._ok(self.http.delete(f"/admin/v1/unlearning-requests/{request_id}"))

    async def longest_protected_span(self, text: str, request_id: str, min_tokens: int = 8) -> int:
        """Tokens in the longest verbatim span of `text` found in the request's protected documents."""
        r = await self._ok(self.http.post("/admin/v1/provenance/lookup", json={
            "text": text, "policy_id": request_id, "min_tokens": min_tokens}))
        return max((s["tokens"] for s in r.json()["spans"]), default=0)

    async def _answer(self, path: str, body: dict[str, Any], guarded: bool) -> Answer:
        # Guarded answers ask for the guard's full detail (a plain client sees only the action).
        headers = {**self.client_auth, DETAIL_HEADER if guarded else BYPASS_HEADER: self.admin_token}
        body = {"model": self.model, "temperature": 0, **body}
        async with self.slots:
            if self.stream:
                text, finish_reason, guard_body = await self._streamed(path, body, headers)
            else:
                r = await self._ok(self.http.post(path, json=body, headers=headers))
                data = r.json()
                choice = data["choices"][0]
                text = choice["message"]["content"] if "message" in choice else choice["text"]
                finish_reason, guard_body = choice.get("finish_reason"), data.get("guard")
        guard = GuardSummary.model_validate(guard_body) if guard_body else GuardSummary(action="pass", policies=[])
        return Answer(text=text or "", finish_reason=finish_reason, action=guard.action,
                      targets=[m.target for m in guard.matches], leaks=guard.leaks,
                      acted=bool(guard.blocked or guard.steered))

    async def _streamed(self, path: str, body: dict[str, Any],
                        headers: dict[str, str]) -> tuple[str, str | None, dict | None]:
        """The text the chunks of a streamed answer delivered, its finish reason and the guard object (on the
        last chunk)."""
        text, finish_reason, guard = [], None, None
        async with self.http.stream("POST", path, json={**body, "stream": True}, headers=headers) as r:
            if r.status_code >= 400:
                raise RuntimeError(f"POST {path} -> {r.status_code}: {(await r.aread())[:500]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: "):])
                for choice in chunk.get("choices") or []:
                    text.append((choice.get("delta") or {}).get("content") or choice.get("text") or "")
                    finish_reason = choice.get("finish_reason") or finish_reason
                guard = chunk.get("guard") or guard
        return "".join(text), finish_reason, guard

    async def chat(self, messages: list[dict[str, str]] | str, *, guarded: bool, max_tokens: int = 64) -> Answer:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        return await self._answer("/v1/chat/completions", {"messages": messages, "max_tokens": max_tokens}, guarded)

    async def complete(self, prompt: str, *, guarded: bool, max_tokens: int = 32) -> Answer:
        return await self._answer("/v1/completions", {"prompt": prompt, "max_tokens": max_tokens}, guarded)


async def gather(calls: Iterable[Awaitable[T]], desc: str) -> list[T]:
    """Run concurrently (the client's semaphore bounds it), in order, with a progress bar."""
    return list(await tqdm_asyncio.gather(*calls, desc=desc, unit="req", leave=False))
