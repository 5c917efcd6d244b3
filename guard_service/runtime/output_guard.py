"""What the guard does while and after a request generates (API process): leak scanning per choice,
blocking, turning a failed-closed row into a refusal, and counting the steps a ban was active."""

from __future__ import annotations

from dataclasses import dataclass, field

from guard_service.runtime.decision import REFUSAL, GuardDecision, Verdict
from guard_service.runtime.leak_detector import LeakScanner
from guard_service.runtime.registry import ActivePolicy
from guard_service.runtime.trie import TrieMatcher

CONTENT_FILTER = "content_filter"


@dataclass
class _Choice:
    scanner: LeakScanner
    matchers: list[TrieMatcher]
    tokens: int = 0
    banned_steps: int = 0
    blocked: bool = False
    failed_closed: bool = False


@dataclass
class OutputGuard:
    decision: GuardDecision
    scanned: list[ActivePolicy]  # every active policy that applies to this request
    choices: dict[int, _Choice] = field(default_factory=dict)

    def _choice(self, index: int) -> _Choice:
        if index not in self.choices:
            steered = [m.policy for m in self.decision.matches] if self.decision.verdict is Verdict.steer else []
            self.choices[index] = _Choice(LeakScanner(self.scanned), [TrieMatcher(p.trie) for p in steered])
        return self.choices[index]

    def on_delta(self, index: int, text: str, token_ids: list[int],
                 finish_reason: str | None) -> tuple[str, str | None, bool]:
        """Returns (text to emit, finish reason to report, whether this choice is now over)."""
        c = self._choice(index)
        if c.blocked:
            return "", None, True
        for tok in token_ids:  # same walk as the engine's processor: how many steps had a ban in force
            if any(m.banned() for m in c.matchers):
                c.banned_steps += 1
            for m in c.matchers:
                m.feed(tok)
        c.tokens += len(token_ids)
        before = len(c.scanner.text)
        block = c.scanner.blocking(c.scanner.feed(text))
        if block is not None:
            c.blocked = True
            return text[: max(0, block.start - before)], CONTENT_FILTER, True
        if finish_reason and self.failed_closed(c, finish_reason):
            c.blocked = c.failed_closed = True
            return REFUSAL, CONTENT_FILTER, True
        return text, finish_reason, finish_reason is not None

    def failed_closed(self, c: _Choice, finish_reason: str) -> bool:
        """A steered row whose policy the worker could not load is forced to end at once (see logits_processor)."""
        return (self.decision.verdict is Verdict.steer and not c.scanner.text and c.tokens <= 1
                and finish_reason == "stop")

    def all_over(self, n: int) -> bool:
        return len(self.choices) == n and all(c.blocked for c in self.choices.values())

    def summary(self) -> dict:
        leaks = []
        for index, c in sorted(self.choices.items()):
            c.scanner.finish()
            leaks += [{**lk, "choice": index} for lk in c.scanner.summary()]
        return self.decision.summary(
            leaks=leaks, tokens_banned_steps=sum(c.banned_steps for c in self.choices.values()),
            blocked=[i for i, c in sorted(self.choices.items()) if c.blocked and not c.failed_closed],
            failed_closed=sum(c.failed_closed for c in self.choices.values()))
