"""From classifier matches to what happens to one prompt: pass, steer (generate under the policies' penalties)
or refuse (answer with a refusal, `finish_reason: "content_filter"`, without generating)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from guard_service.frontend.classifier import Classification, Match
from guard_service.frontend.registry import FailedPolicy
from guard_service.frontend.summary import DecisionInfo, FailedInfo, MatchInfo
from guard_service.policy.request import Action
from guard_service.protocol import GuardArgs, PolicyKey

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
    failed_closed: list[FailedPolicy] = field(default_factory=list)  # applicable policies that cannot load
    shadow: list[Match] = field(default_factory=list)  # shadow-mode policies that matched: not enforced

    @property
    def shadow_verdict(self) -> Verdict:
        """What the shadow-mode matches would have done to this prompt."""
        return _verdict(self.shadow)

    @property
    def keys(self) -> list[str]:
        return [m.policy.key for m in self.matches] + [f.key for f in self.failed_closed]

    @property
    def policy_ids(self) -> list[str]:
        """Opaque ids, all a plain client is told."""
        return [m.policy.id for m in self.matches] + [f.id for f in self.failed_closed]

    @property
    def reason(self) -> str:
        return "failed_closed" if self.failed_closed else "classifier"

    def guard_args(self, applicable: list[PolicyKey], marker: int | None) -> GuardArgs:
        """What the engine's logits processor needs: the steering policies, and every other applicable policy
        in watch mode (verbatim protections only), unless an admin bypassed the guard."""
        steering = tuple(m.policy.policy_key for m in self.matches) if self.verdict is Verdict.steer else ()
        matched = {m.policy.policy_key for m in self.matches}
        watching = () if self.bypassed_by is not None else tuple(k for k in applicable if k not in matched)
        return GuardArgs(steer=steering, watch=watching, marker=marker)

    def detail(self) -> DecisionInfo:
        """Everything the guard knows about this decision: for admins, viewers and the audit log only."""
        return DecisionInfo(
            action=self.verdict.value, policies=self.keys,
            matches=[MatchInfo(policy=m.policy.key, target=m.policy.spec.target, score=round(m.score, 4),
                               reasons=m.reasons) for m in self.matches],
            failed_closed_policies=[FailedInfo(policy=f.key, error=f.error) for f in self.failed_closed],
            scores=self.scores, classifier_ms=round(self.classifier_ms, 2), bypassed_by=self.bypassed_by,
            shadow=[MatchInfo(policy=m.policy.key, target=m.policy.spec.target, score=round(m.score, 4),
                              reasons=m.reasons) for m in self.shadow])


def _verdict(matches: list[Match]) -> Verdict:
    if not matches:
        return Verdict.passed
    refuse = any(m.policy.action is Action.refuse or m.score >= m.policy.refuse_threshold for m in matches)
    return Verdict.refuse if refuse else Verdict.steer


def decide(result: Classification) -> GuardDecision:
    """The enforced policies' matches decide; a shadow-mode policy's match is only recorded (`shadow`)."""
    enforced = [m for m in result.matches if not m.policy.shadow]
    return GuardDecision(_verdict(enforced), enforced, result.scores, result.elapsed_ms,
                         shadow=[m for m in result.matches if m.policy.shadow])


def fail_closed(failed: list[FailedPolicy]) -> GuardDecision:
    """A request that an unloadable policy applies to: refused, whatever the classifier would say."""
    return GuardDecision(Verdict.refuse, failed_closed=list(failed))
