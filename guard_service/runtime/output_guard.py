"""What the guard does while and after a request generates (API process): leak scanning per choice (from the
prompt's tail on), blocking, turning a failed-closed row into a refusal, and counting the steps a ban was
active."""

from __future__ import annotations

from dataclasses import dataclass, field

from guard_service.runtime.decision import REFUSAL, GuardDecision, Verdict
from guard_service.runtime.leak_detector import LeakScanner
from guard_service.runtime.registry import ActivePolicy
from guard_service.runtime.trie import TrieMatcher

CONTENT_FILTER = "content_filter"


@dataclass
class _Choice:
    decision: GuardDecision
    scanner: LeakScanner
    matchers: list[TrieMatcher]
    tokens: int = 0
    banned_steps: int = 0
    blocked: bool = False
    failed_closed: bool = False


@dataclass
class OutputGuard:
    decisions: list[GuardDecision]  # one per prompt; choice i belongs to prompt i // n
    scanned: list[ActivePolicy]  # every active policy that applies to this request
    n: int = 1
    tails: list[tuple[str, list[int]]] = field(default_factory=list)  # per prompt: its end, as text and token ids
    choices: dict[int, _Choice] = field(default_factory=dict)

    def _choice(self, index: int) -> _Choice:
        if index not in self.choices:
            prompt = index // self.n
            decision = self.decisions[prompt]
            text, ids = self.tails[prompt] if prompt < len(self.tails) else ("", [])
            steered = [m.policy for m in decision.matches] if decision.verdict is Verdict.steer else []
            matchers = [TrieMatcher(p.trie) for p in steered]
            for m in matchers:
                m.seed(ids)
            self.choices[index] = _Choice(decision, LeakScanner(self.scanned, text), matchers)
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
        before = len(c.scanner.output)
        block = c.scanner.blocking(c.scanner.feed(text))
        if block is not None:
            c.blocked = True
            return text[: max(0, block.start - before)], CONTENT_FILTER, True
        if finish_reason and self.failed_closed(c, finish_reason):
            c.blocked = c.failed_closed = True
            return REFUSAL, CONTENT_FILTER, True
        return text, finish_reason, finish_reason is not None

    @staticmethod
    def failed_closed(c: _Choice, finish_reason: str) -> bool:
        """A steered row whose policy the worker could not load is forced to end at once (see logits_processor)."""
        return (c.decision.verdict is Verdict.steer and not c.scanner.output and c.tokens <= 1
                and finish_reason == "stop")

    def all_over(self, n_choices: int) -> bool:
        return len(self.choices) == n_choices and all(c.blocked for c in self.choices.values())

    def finish(self) -> None:
        """The end-of-output checks (semantic leaks: embeds). Blocking: call off the event loop."""
        for c in self.choices.values():
            c.scanner.finish()

    def detail(self) -> dict:
        """The guard's whole account of the request (call `finish` first): for admins and viewers only."""
        decisions = self.decisions
        verdict = aggregate(decisions)
        leaks = [{**lk, "choice": index} for index, c in sorted(self.choices.items()) for lk in c.scanner.summary()]
        out = {"action": verdict.value, "policies": list(dict.fromkeys(k for d in decisions for k in d.keys)),
               "matches": [m for d in decisions for m in d.detail()["matches"]],
               "failed_closed_policies": [f for d in decisions for f in d.detail()["failed_closed_policies"]],
               "classifier_ms": round(max(d.classifier_ms for d in decisions), 2),
               "bypassed_by": decisions[0].bypassed_by,
               "leaks": leaks, "tokens_banned_steps": sum(c.banned_steps for c in self.choices.values()),
               "blocked": self.blocked(),
               "failed_closed": sum(c.failed_closed for c in self.choices.values())}
        if len(decisions) > 1:
            out["prompts"] = [d.detail() for d in decisions]
        return out

    def public(self) -> dict:
        """What any client may see: that the guard acted, and opaque policy ids. Never targets, aliases,
        reasons, scores or leaked text."""
        return {"action": aggregate(self.decisions).value,
                "policies": list(dict.fromkeys(i for d in self.decisions for i in d.policy_ids)),
                "blocked": self.blocked()}

    def blocked(self) -> list[int]:
        return [i for i, c in sorted(self.choices.items()) if c.blocked and not c.failed_closed]


def aggregate(decisions: list[GuardDecision]) -> Verdict:
    """The request's action: the most severe of its prompts' decisions."""
    order = [Verdict.passed, Verdict.steer, Verdict.refuse]
    return max((d.verdict for d in decisions), key=order.index, default=Verdict.passed)
