"""The guard's view of one request (API process): who is asking and what they may see, one decision per
prompt before generation, the output guard while it generates, and afterwards the metrics and the response's
guard object (full detail for admins and viewers, the action and opaque policy ids for everyone else)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from guard_service.frontend import recorder
from guard_service.frontend.decision import GuardDecision, Verdict
from guard_service.frontend.guard import Guard
from guard_service.frontend.output_guard import OutputGuard, aggregate
from guard_service.frontend.summary import GuardSummary, PublicGuard
from guard_service.protocol import GuardArgs
from guard_service.serving.generation import ChoiceDelta, Generation
from guard_service.serving.prompts import Prompt


class GuardSession:
    def __init__(self, guard: Guard, *, model: str, tenant: str | None, endpoint: str, n: int = 1,
                 stream: bool = True, bypass_token: str | None = None, detail_token: str | None = None):
        """`stream`: the client reads deltas as they are released (False: it gets the answer at the end, so the
        output guard judges it a sentence at a time, not a delta at a time)."""
        self.guard, self.model, self.tenant, self.endpoint, self.n = guard, model, tenant, endpoint, n
        self.stream = stream
        self.access = guard.access(bypass_token, detail_token, tenant, endpoint)  # 403 before any work
        self.started = time.perf_counter()
        self.first_text_at: float | None = None
        self.decisions: list[GuardDecision] = []
        self.output = OutputGuard([], [], n)

    async def check(self, prompts: list[Prompt]) -> list[GuardDecision]:
        policies, failed = self.guard.applicable(self.model, self.tenant)
        self.decisions = await self.guard.check([p.segments for p in prompts], policies, failed, self.access)
        applicable = [p.policy_key for p in policies if not p.shadow]  # the worker watches the enforced ones
        self.output = OutputGuard(self.decisions, policies, self.n, [p.tail for p in prompts],
                                  [d.guard_args(applicable, self.guard.marker) for d in self.decisions],
                                  self.guard.marker,
                                  self.guard.settings.output_holdback_chars, self.guard.settings.output_mode,
                                  self.stream)
        recorder.decisions(self.decisions, self.endpoint, self.tenant)
        self.guard.audit_decisions(self.decisions, self.tenant, self.endpoint)
        return self.decisions

    @property
    def verdict(self) -> Verdict:
        return aggregate(self.decisions)

    def refused(self, prompt_index: int) -> bool:
        return self.decisions[prompt_index].verdict is Verdict.refuse

    def guard_args(self, prompt_index: int) -> GuardArgs:
        """The row's contract with the worker (protocol.py); its marker also goes into `stop_token_ids`."""
        return self.output.args[prompt_index]

    def public(self) -> PublicGuard:
        """What any client may see before generation (the response headers)."""
        return PublicGuard(action=self.verdict.value,
                           policies=list(dict.fromkeys(i for d in self.decisions for i in d.policy_ids)))

    async def guarded(self, generation: Generation, n_choices: int) -> AsyncIterator[ChoiceDelta]:
        """The engine's deltas after the output guard, which may hold text back, end a choice or restart it
        steered (`OutputGuard`). Stops generating once every choice is over (that aborts the engine requests)."""
        async with contextlib.aclosing(aiter(generation)) as deltas:  # closing it aborts what still runs
            async for d in deltas:
                step = await self.output.on_delta(d)
                if step.restart is not None:
                    index, kept, args = step.restart
                    generation.restart(index, kept, args.apply)
                if step.emit is not None:
                    if step.emit.text and self.first_text_at is None:
                        self.first_text_at = time.perf_counter()
                    yield step.emit
                if self.output.all_over(n_choices):
                    return

    def headers(self) -> dict[str, str]:
        level = "full" if self.access.detail else self.guard.settings.client_guard_detail
        if level == "none":
            return {}
        public = self.public()
        headers = {"x-guard-action": public.action, "x-guard-policies": ",".join(public.policies)}
        if level == "full":
            best = max((s for d in self.decisions for s in d.scores.values()), default=0.0)
            headers["x-guard-score"] = f"{best:.4f}"
        return headers

    async def summary(self, output_tokens: int) -> GuardSummary | PublicGuard | None:
        """The response's guard object; records the request's outcome metrics (call once, at the end)."""
        await asyncio.to_thread(self.output.finish)
        detail = self.output.detail()
        recorder.outcome(detail, output_tokens)
        self.guard.audit_shadow_output([(s.policy, s.would) for s in detail.shadow if s.side == "output"],
                                       self.tenant, self.endpoint)
        ttft = None if self.first_text_at is None else self.first_text_at - self.started
        recorder.latency(self.endpoint, self.verdict is not Verdict.passed, time.perf_counter() - self.started, ttft)
        if self.access.detail:
            return detail
        return None if self.guard.settings.client_guard_detail == "none" else detail.public()
