"""Turn what the request path knows into metric updates (API process)."""

from __future__ import annotations

from guard_service.metrics import definitions as m
from guard_service.runtime.decision import GuardDecision, Verdict


def decision(d: GuardDecision, endpoint: str) -> None:
    m.REQUESTS.labels(d.verdict.value, endpoint).inc()
    if d.bypassed_by is None and d.scores:
        m.CLASSIFIER_SECONDS.observe(d.classifier_ms / 1000)
        for key, score in d.scores.items():
            m.CLASSIFIER_SCORE.labels(key.split("@")[0]).observe(score)
    for match in d.matches:
        m.POLICY_MATCHES.labels(match.policy.id, match.policy.spec.target).inc()
    if d.verdict is Verdict.refuse:
        m.REFUSALS.labels("classifier").inc()


def outcome(summary: dict, output_tokens: int) -> None:
    """`summary`: the guard object of a finished response (see OutputGuard.summary)."""
    m.OUTPUT_TOKENS.labels(summary["action"]).inc(output_tokens)
    for leak in summary.get("leaks", []):
        m.LEAKS.labels(leak["policy"].split("@")[0], leak["kind"]).inc()
    if summary.get("blocked"):
        m.REFUSALS.labels("leak_blocked").inc(len(summary["blocked"]))
    if summary.get("failed_closed"):
        m.REFUSALS.labels("failed_closed").inc(summary["failed_closed"])


def latency(endpoint: str, guarded: bool, seconds: float, ttft: float | None) -> None:
    label = "true" if guarded else "false"
    m.REQUEST_SECONDS.labels(endpoint, label).observe(seconds)
    if ttft is not None:
        m.TTFT_SECONDS.labels(endpoint, label).observe(ttft)
