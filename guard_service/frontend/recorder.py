"""Turn what the request path knows into metric updates (API process). Policies are labelled by id only."""

from __future__ import annotations

from guard_service.frontend.decision import GuardDecision, Verdict
from guard_service.frontend.summary import GuardSummary
from guard_service.metrics import definitions as m

ANONYMOUS = "anonymous"


def decisions(ds: list[GuardDecision], endpoint: str, tenant: str | None) -> None:
    """One count per prompt decision; the classifier's time once per request."""
    timed = [d for d in ds if d.bypassed_by is None and d.scores]
    if timed:
        m.CLASSIFIER_SECONDS.observe(timed[0].classifier_ms / 1000)
    for d in ds:
        m.REQUESTS.labels(d.verdict.value, endpoint, tenant or ANONYMOUS).inc()
        for key, score in (d.scores.items() if d.bypassed_by is None else ()):
            m.CLASSIFIER_SCORE.labels(key.split("@")[0]).observe(score)
        for match in d.matches:
            m.POLICY_MATCHES.labels(match.policy.id).inc()
        if d.verdict is Verdict.refuse:
            m.REFUSALS.labels(d.reason).inc()


def outcome(summary: GuardSummary, output_tokens: int) -> None:
    """`summary`: the full guard account of a finished response (see OutputGuard.detail)."""
    m.OUTPUT_TOKENS.labels(summary.action).inc(output_tokens)
    for leak in summary.leaks:
        m.LEAKS.labels(leak.policy.split("@")[0], leak.kind).inc()
    if summary.blocked:
        m.REFUSALS.labels("leak_blocked").inc(len(summary.blocked))
        m.OUTPUT_ACTIONS.labels("refuse").inc(len(summary.blocked))
    if summary.steered:
        m.OUTPUT_ACTIONS.labels("steer").inc(len(summary.steered))
    if summary.failed_closed:
        m.REFUSALS.labels("failed_closed").inc(summary.failed_closed)
    for s in summary.shadow:
        m.SHADOW.labels(s.policy.split("@")[0], s.would, s.side).inc()


def latency(endpoint: str, guarded: bool, seconds: float, ttft: float | None) -> None:
    label = "true" if guarded else "false"
    m.REQUEST_SECONDS.labels(endpoint, label).observe(seconds)
    if ttft is not None:
        m.TTFT_SECONDS.labels(endpoint, label).observe(ttft)
