"""The guard stage of the request path (API process): classify, decide, and describe what was done."""

from __future__ import annotations

import asyncio
from pathlib import Path

from guard_service.api.auth import authenticate
from guard_service.api.errors import APIError
from guard_service.config import Settings
from guard_service.runtime.classifier import classify
from guard_service.runtime.decision import GuardDecision, Verdict, decide
from guard_service.runtime.registry import ActivePolicy, PolicyRegistry
from guard_service.store.sqlite import PolicyStore

BYPASS_HEADER = "x-guard-bypass"


class Guard:
    def __init__(self, settings: Settings, registry: PolicyRegistry, store: PolicyStore):
        self.settings = settings
        self.registry = registry
        self.store = store
        self.policies_dir: Path = settings.path(settings.policies_dir)

    def applicable(self, model: str, api_key: str | None) -> list[ActivePolicy]:
        return [p for p in self.registry.active() if p.applies_to(model, api_key)]

    async def check(self, turns: list[str], model: str, policies: list[ActivePolicy],
                    bypass_token: str | None = None) -> GuardDecision:
        """`policies`: those `applicable` to this request (the output guard scans the same list)."""
        if bypass_token is not None:
            principal = authenticate(self.settings, bypass_token)
            if principal is None or not principal.can_write:
                raise APIError(403, "x-guard-bypass needs a valid admin token", code="forbidden")
            self.store.record(principal.name, "unguarded-generation", detail={"model": model})
            return GuardDecision(Verdict.passed, bypassed_by=principal.name)
        if not policies:
            return GuardDecision(Verdict.passed)
        return decide(await asyncio.to_thread(classify, turns, policies))

    @staticmethod
    def headers(decision: GuardDecision) -> dict[str, str]:
        best = max(decision.scores.values(), default=0.0)
        return {"x-guard-action": decision.verdict.value, "x-guard-policies": ",".join(decision.keys),
                "x-guard-score": f"{best:.4f}"}
