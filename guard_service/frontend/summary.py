"""The guard's account of one request, typed: built by the output guard, returned in full to admins and viewers
(the response's `guard` object), read by the metrics recorder and by the evaluation client; `PublicGuard` is all a
plain client sees. Pydantic only: the evaluation client imports this without the rest of the service."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer


class _Checked(BaseModel):
    """`checked` (GUARD_OUTPUT_MODE=release: per choice, how many characters were judged; offsets, never content)
    is there only where output was sent before it was judged."""

    checked: list[int] | None = None

    @model_serializer(mode="wrap")
    def _without_unchecked(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if out.get("checked", 0) is None:
            del out["checked"]
        return out


class MatchInfo(BaseModel):
    policy: str  # "pol_…@version"
    target: str
    score: float
    reasons: list[str]


class FailedInfo(BaseModel):
    policy: str
    error: str


class ShadowInfo(BaseModel):
    """What a shadow-mode policy would have done to this request (it did nothing)."""

    policy: str
    would: str  # steer | refuse
    side: str  # prompt (the classifier matched) | output (a leak it would have acted on)


class DecisionInfo(BaseModel):
    action: str  # pass | steer | refuse
    policies: list[str]
    matches: list[MatchInfo] = Field(default_factory=list)
    failed_closed_policies: list[FailedInfo] = Field(default_factory=list)
    scores: dict[str, float] = Field(default_factory=dict)
    classifier_ms: float = 0.0
    bypassed_by: str | None = None
    shadow: list[MatchInfo] = Field(default_factory=list)  # shadow-mode policies that matched (not enforced)


class LeakInfo(BaseModel):
    policy: str
    kind: str  # lexical | semantic
    text: str
    start: int
    score: float | None = None
    choice: int = 0


class GuardSummary(_Checked):
    action: str
    policies: list[str]
    matches: list[MatchInfo] = Field(default_factory=list)
    failed_closed_policies: list[FailedInfo] = Field(default_factory=list)
    classifier_ms: float = 0.0
    bypassed_by: str | None = None
    leaks: list[LeakInfo] = Field(default_factory=list)
    blocked: list[int] = Field(default_factory=list)  # choices ended at a leak
    steered: list[int] = Field(default_factory=list)  # choices switched to steered decoding at a leak
    failed_closed: int = 0  # choices the worker ended because a policy could not load
    shadow: list[ShadowInfo] = Field(default_factory=list)  # what shadow-mode policies would have done
    prompts: list[DecisionInfo] | None = None  # one per prompt, when a request has several

    def public(self) -> PublicGuard:
        return PublicGuard(action=self.action, policies=list(dict.fromkeys(p.rpartition("@")[0] or p
                                                                              for p in self.policies)),
                           blocked=self.blocked, steered=self.steered, checked=self.checked)


class PublicGuard(_Checked):
    """What any client may see: that the guard acted, and opaque policy ids. Never targets, aliases, reasons,
    scores or leaked text."""

    action: str
    policies: list[str]
    blocked: list[int] = Field(default_factory=list)
    steered: list[int] = Field(default_factory=list)
