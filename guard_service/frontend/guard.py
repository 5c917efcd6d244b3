"""The guard stage of the request path (API process), process-wide: who may see or skip the guard, which
policies apply to a request, and the per-prompt decisions (classify, decide, audit)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from guard_service.auth import BYPASS_HEADER, DETAIL_HEADER, authenticate
from guard_service.config import Settings
from guard_service.errors import ServiceError
from guard_service.frontend.classifier import classify_batch
from guard_service.frontend.decision import GuardDecision, Verdict, decide, fail_closed
from guard_service.frontend.registry import ActivePolicy, FailedPolicy, PolicyRegistry
from guard_service.metrics import definitions as metrics
from guard_service.protocol import fail_closed_marker
from guard_service.store.audit_sink import AuditSink


@dataclass(frozen=True)
class Access:
    """What this caller may do to the guard: skip it (an admin, audited) and see its full detail."""

    bypassed_by: str | None = None
    detail: bool = False


class Guard:
    def __init__(self, settings: Settings, registry: PolicyRegistry, audit: AuditSink,
                 tokenizer: Callable[[], Any] | None = None):
        self.settings = settings
        self.registry = registry
        self.audit = audit
        self._tokenizer = tokenizer  # the served model's (once the engine is up): picks the fail-closed marker
        self._marker: list[int | None] = []

    @property
    def marker(self) -> int | None:
        """The token a row the worker failed closed stops on (protocol.fail_closed_marker)."""
        if not self._marker and self._tokenizer is not None:
            self._marker.append(fail_closed_marker(self._tokenizer()))
        return self._marker[0] if self._marker else None

    def access(self, bypass_token: str | None, detail_token: str | None, tenant: str | None,
               endpoint: str) -> Access:
        """403 (audited) for a bypass without an admin token or a detail request without an admin/viewer one."""
        subject = {"tenant": tenant, "endpoint": endpoint}
        if bypass_token is not None:
            principal = authenticate(self.settings, bypass_token)
            if principal is None or not principal.can_write:
                self._refused("bypass", principal.name if principal else "anonymous", subject)
                raise ServiceError(403, f"{BYPASS_HEADER} needs a valid admin token", code="forbidden")
            self.audit.record(principal.name, "unguarded-generation", detail=subject)
            return Access(bypassed_by=principal.name, detail=True)
        if detail_token is not None:
            principal = authenticate(self.settings, detail_token)
            if principal is None:
                self._refused("detail", "anonymous", subject)
                raise ServiceError(403, f"{DETAIL_HEADER} needs a valid admin or viewer token", code="forbidden")
            return Access(detail=True)
        return Access(detail=self.settings.client_guard_detail == "full")

    def _refused(self, surface: str, actor: str, subject: dict) -> None:
        metrics.AUTH_FAILURES.labels(surface).inc()
        self.audit.record(actor, f"{surface}-refused", detail=subject)

    def applicable(self, model: str, tenant: str | None) -> tuple[list[ActivePolicy], list[FailedPolicy]]:
        """The active policies that apply (shadow-mode ones included: scored, not enforced) and the enforced ones
        this process cannot load (they refuse what they apply to)."""
        return ([p for p in self.registry.active() if p.applies_to(model, tenant)],
                [f for f in self.registry.failed_closed() if f.applies_to(model, tenant) and not f.shadow])

    async def check(self, prompts: list[list[str]], policies: list[ActivePolicy], failed: list[FailedPolicy],
                    access: Access) -> list[GuardDecision]:
        """One decision per prompt (`prompts`: each prompt's segments, see `classifier.views`)."""
        if access.bypassed_by is not None:
            return [GuardDecision(Verdict.passed, bypassed_by=access.bypassed_by) for _ in prompts]
        if failed:
            return [fail_closed(failed) for _ in prompts]
        if not policies:
            return [GuardDecision(Verdict.passed) for _ in prompts]
        results = await asyncio.to_thread(classify_batch, prompts, policies, self.settings.embedder_window_words)
        return [decide(r) for r in results]

    def audit_decisions(self, decisions: list[GuardDecision], tenant: str | None, endpoint: str) -> None:
        for i, d in enumerate(decisions):
            if d.verdict is not Verdict.passed:
                self.audit.record(tenant or "anonymous", "guard-decision",
                                  detail={"endpoint": endpoint, "prompt": i, "reason": d.reason,
                                          **d.detail().model_dump(mode="json")})
            if d.shadow:
                self.audit.record(tenant or "anonymous", "shadow-decision",
                                  detail={"endpoint": endpoint, "prompt": i, "would": d.shadow_verdict.value,
                                          "policies": [m.policy.key for m in d.shadow],
                                          "matches": [m.model_dump() for m in d.detail().shadow]})

    def audit_shadow_output(self, actions: list[tuple[str, str]], tenant: str | None, endpoint: str) -> None:
        """Leaks in the output that shadow-mode policies would have acted on: (policy key, would)."""
        if actions:
            self.audit.record(tenant or "anonymous", "shadow-output",
                              detail={"endpoint": endpoint, "would": [{"policy": k, "would": w} for k, w in actions]})
