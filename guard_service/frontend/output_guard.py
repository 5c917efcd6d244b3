"""What the guard does while and after a request generates (API process): every guard component's output
scanner over each choice (from its prompt's tail on), cutting a choice at a blocking leak, and turning a row the
worker failed closed (it stops on the protocol's marker token) into a refusal; then the typed account."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from guard_service.frontend.decision import REFUSAL, GuardDecision, Verdict
from guard_service.frontend.registry import ActivePolicy
from guard_service.frontend.summary import GuardSummary, LeakInfo
from guard_service.guards import COMPONENTS
from guard_service.guards.base import GuardComponent, OutputScanner

CONTENT_FILTER = "content_filter"
SCANNERS = tuple(c for c in COMPONENTS if type(c).output_scanner is not GuardComponent.output_scanner)


@dataclass
class _Choice:
    decision: GuardDecision
    scanners: list[OutputScanner]
    emitted: int = 0  # characters of output delivered so far
    tokens: int = 0
    found: list[Any] = field(default_factory=list)
    blocked: bool = False
    failed_closed: bool = False


@dataclass
class OutputGuard:
    decisions: list[GuardDecision]  # one per prompt; choice i belongs to prompt i // n
    scanned: list[ActivePolicy]  # every active policy that applies to this request
    n: int = 1
    tails: list[str] = field(default_factory=list)  # per prompt: the end of the prompt the output continues
    marker: int | None = None  # the token a worker-failed row stops on (protocol.py)
    choices: dict[int, _Choice] = field(default_factory=dict)

    def _choice(self, index: int) -> _Choice:
        if index not in self.choices:
            prompt = index // self.n
            tail = self.tails[prompt] if prompt < len(self.tails) else ""
            scanners = [s for c in SCANNERS if (s := c.output_scanner(
                [(p.key, p.parts[c.name]) for p in self.scanned], tail)) is not None]
            self.choices[index] = _Choice(self.decisions[prompt], scanners)
        return self.choices[index]

    def on_delta(self, index: int, text: str, token_ids: list[int], finish_reason: str | None,
                 stop_reason: Any = None) -> tuple[str, str | None, bool]:
        """Returns (text to emit, finish reason to report, whether this choice is now over)."""
        c = self._choice(index)
        if c.blocked:
            return "", None, True
        c.tokens += len(token_ids)
        found = [item for s in c.scanners for item in s.feed(text)]
        block = min((f for f in found if getattr(f, "block", False)), key=lambda f: f.start, default=None)
        if block is not None:
            c.blocked = True
            return text[: max(0, block.start - c.emitted)], CONTENT_FILTER, True
        if finish_reason == "stop" and self.marker is not None and stop_reason == self.marker:
            c.blocked = c.failed_closed = True  # the worker could not load a policy of this row
            return REFUSAL, CONTENT_FILTER, True
        c.emitted += len(text)
        return text, finish_reason, finish_reason is not None

    def all_over(self, n_choices: int) -> bool:
        return len(self.choices) == n_choices and all(c.blocked for c in self.choices.values())

    def finish(self) -> None:
        """The end-of-output checks (semantic leaks: embeds). Blocking: call off the event loop."""
        for c in self.choices.values():
            c.found = [item for s in c.scanners for item in s.finish()]

    def detail(self) -> GuardSummary:
        """The guard's whole account of the request (call `finish` first): for admins and viewers only."""
        decisions = [d.detail() for d in self.decisions]
        leaks = [LeakInfo(policy=lk.policy, kind=lk.kind, text=lk.text, start=lk.start,
                          score=None if lk.score is None else round(lk.score, 4), choice=index)
                 for index, c in sorted(self.choices.items()) for lk in c.found]
        return GuardSummary(
            action=aggregate(self.decisions).value,
            policies=list(dict.fromkeys(k for d in decisions for k in d.policies)),
            matches=[m for d in decisions for m in d.matches],
            failed_closed_policies=[f for d in decisions for f in d.failed_closed_policies],
            classifier_ms=max(d.classifier_ms for d in decisions), bypassed_by=decisions[0].bypassed_by,
            leaks=leaks, blocked=[i for i, c in sorted(self.choices.items()) if c.blocked and not c.failed_closed],
            failed_closed=sum(c.failed_closed for c in self.choices.values()),
            prompts=decisions if len(decisions) > 1 else None)


def aggregate(decisions: list[GuardDecision]) -> Verdict:
    """The request's action: the most severe of its prompts' decisions."""
    order = [Verdict.passed, Verdict.steer, Verdict.refuse]
    return max((d.verdict for d in decisions), key=order.index, default=Verdict.passed)
