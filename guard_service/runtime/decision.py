"""From classifier matches to what happens to the request: pass, steer (generate under the policies'
penalties) or refuse (answer with a refusal, `finish_reason: "content_filter"`, without generating)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from guard_service.policy.request import Action
from guard_service.runtime.classifier import Classification, Match
from guard_service.runtime.logits_processor import POLICIES_ARG, ROOT_ARG, WATCH_ARG

REFUSAL = "I'm sorry, but I can't help with that. That information has been removed from what I can discuss."


class Verdict(StrEnum):
    passed = "pass"
    steer = "steer"
    refuse = "refuse"


@dataclass
class GuardDecision:
    verdict: Verdict
    matches: list[Match] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    classifier_ms: float = 0.0
    bypassed_by: str | None = None

    @property
    def keys(self) -> list[str]:
        return [m.policy.key for m in self.matches]

    def extra_args(self, policies_dir: Path, applicable: list[str]) -> dict[str, Any] | None:
        """What the engine's logits processor needs: the steering policies, and every other applicable policy
        in watch mode (verbatim protections only), unless an admin bypassed the guard."""
        args: dict[str, Any] = {}
        if self.verdict is Verdict.steer:
            args[POLICIES_ARG] = ",".join(self.keys)
        watching = [k for k in applicable if k not in self.keys]
        if watching and self.bypassed_by is None:
            args[WATCH_ARG] = ",".join(watching)
        return {**args, ROOT_ARG: str(policies_dir)} if args else None

    def summary(self, **extra: Any) -> dict[str, Any]:
        return {"action": self.verdict.value, "policies": self.keys,
                "matches": [{"policy": m.policy.key, "target": m.policy.spec.target, "score": round(m.score, 4),
                             "reasons": m.reasons} for m in self.matches],
                "classifier_ms": round(self.classifier_ms, 2), "bypassed_by": self.bypassed_by, **extra}


def decide(result: Classification) -> GuardDecision:
    if not result.matches:
        return GuardDecision(Verdict.passed, [], result.scores, result.elapsed_ms)
    refuse = any(m.policy.action is Action.refuse or m.score >= m.policy.refuse_threshold for m in result.matches)
    return GuardDecision(Verdict.refuse if refuse else Verdict.steer, result.matches, result.scores,
                         result.elapsed_ms)
