"""What the guard does while and after a request generates (API process), whatever the prompt classifier said:
every guard component's output scanner over each choice (from its prompt's tail on), and the action a policy
takes when its knowledge shows up in the output.

While any applicable policy acts on leaks (`on_leak: act`, the default), `GUARD_OUTPUT_MODE` says how:
    hold (default): each delta is scanned for names in every spelling as it arrives, and released (text, tokens
        and logprobs together) as soon as nothing in it can still become a leak (`OutputScanner.releasable`):
        what waits is the tail that may still grow into a name, and a sentence's last word until the sentence is
        judged against the facts as a whole (once it ends, or past `GUARD_OUTPUT_HOLDBACK_CHARS` at a word
        boundary), or all the rest of a sentence from where it came near a fact. So a client never receives a
        name acted on, nor the whole of a sentence judged a leak, and benign text streams as it is generated;
    release: every delta is sent at once (a delta that completes a name is not), sentences are judged as they
        end, and the first judged leak ends the choice (`content_filter`); the guard object says how much of
        each choice was checked (`checked`), as Azure's asynchronous filter does.
A request that is not streamed is judged a sentence at a time in either mode (its client reads nothing before the
end, so judging each delta would cost the engine CPU and buy nothing).
On a leak (hold mode):
    refuse policy (or a steer policy already steering this choice): the choice ends, `content_filter`;
    steer policy: the choice's engine request is aborted and resumed from the last released token, steered by
        that policy (`Step.restart`), so the client sees one continuous answer.
A row the worker failed closed (it stops on the protocol's marker token) becomes a refusal. Then the typed
account (`detail`)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

from guard_service.frontend.decision import REFUSAL, GuardDecision, Verdict
from guard_service.frontend.registry import ActivePolicy
from guard_service.frontend.summary import GuardSummary, LeakInfo, ShadowInfo
from guard_service.guards import COMPONENTS
from guard_service.guards.base import GuardComponent, OutputScanner
from guard_service.policy.request import Action
from guard_service.protocol import GuardArgs
from guard_service.serving.generation import ChoiceDelta

CONTENT_FILTER = "content_filter"
SCANNERS = tuple(c for c in COMPONENTS if type(c).output_scanner is not GuardComponent.output_scanner)
MAX_SWITCHES = 3  # steered restarts of one choice before a further leak ends it
_SENTENCE_ENDS = re.compile(r"[.!?…][\"'”’)\]]*(?=\s)|[。！？][\"'”’)\]]*|\n")  # a sentence has ended there


@dataclass
class Step:
    """What to do after one delta from the engine: send `emit`, restart a choice, or nothing yet."""

    emit: ChoiceDelta | None = None
    restart: tuple[int, list[int], GuardArgs] | None = None  # (choice, output tokens kept, its new guard args)


@dataclass
class _Choice:
    prompt: int
    args: GuardArgs  # what its engine request runs under
    scanners: list[OutputScanner]
    held: list[ChoiceDelta] = field(default_factory=list)
    unscanned: str = ""  # text not yet fed to the scanners (report-only requests; a non-streaming one's held text)
    released: str = ""  # text sent to the client
    released_ids: list[int] = field(default_factory=list)
    offset: int = 0  # where the current scanners' output begins in the choice's text
    judged: int = 0  # how much of the current scanners' output the semantic check has judged
    past: list[Any] = field(default_factory=list)  # findings of scanners replaced at a restart
    found: list[Any] = field(default_factory=list)
    tokens: int = 0  # tokens the engine generated for it (kept or not)
    switched: list[str] = field(default_factory=list)  # policies it was switched to steering by
    blocked: bool = False
    failed_closed: bool = False
    over: bool = False


@dataclass
class OutputGuard:
    decisions: list[GuardDecision]  # one per prompt; choice i belongs to prompt i // n
    scanned: list[ActivePolicy]  # every active policy that applies to this request
    n: int = 1
    tails: list[str] = field(default_factory=list)  # per prompt: the end of the prompt the output continues
    args: list[GuardArgs] = field(default_factory=list)  # per prompt: the guard args its rows start with
    marker: int | None = None  # the token a worker-failed row stops on (protocol.py)
    holdback_chars: int = 240
    mode: str = "hold"  # hold: release what is not at risk | release: send at once, end the choice at a leak
    stream: bool = True  # False: nothing reaches the client before the end: judged a sentence at a time
    choices: dict[int, _Choice] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._policies = {p.key: p for p in self.scanned}
        bypassed = any(d.bypassed_by is not None for d in self.decisions)
        # Whether any policy acts on leaks: output is then held back and judged before release (and the engine
        # must stream deltas).
        self.holds = not bypassed and any(p.spec.on_leak == "act" and not p.shadow for p in self.scanned)

    def _scanners(self, tail: str) -> list[OutputScanner]:
        parts = [(p.key, p) for p in self.scanned]
        return [s for c in SCANNERS if (s := c.output_scanner([(k, p.parts[c.name]) for k, p in parts], tail))
                is not None]

    def _tail(self, prompt: int) -> str:
        return self.tails[prompt] if prompt < len(self.tails) else ""

    async def _choice(self, index: int) -> _Choice:
        if index not in self.choices:
            prompt = index // self.n
            args = self.args[prompt] if prompt < len(self.args) else GuardArgs()
            # off the loop: the scanners' shared state over every applicable policy is built on first use after
            # a policy change (the registry builds it ahead for unscoped requests)
            scanners = await asyncio.to_thread(self._scanners, self._tail(prompt))
            self.choices.setdefault(index, _Choice(prompt, args, scanners))
        return self.choices[index]

    async def on_delta(self, d: ChoiceDelta) -> Step:
        c = await self._choice(d.index)
        if c.over:
            return Step()
        c.tokens += len(d.token_ids)
        if d.finish_reason == "stop" and self.marker is not None and d.stop_reason == self.marker:
            c.over = c.blocked = c.failed_closed = True  # the worker could not load a policy of this row
            c.held = []
            return Step(ChoiceDelta(d.index, REFUSAL, [], None, CONTENT_FILTER))
        c.held.append(d)
        final = d.finish_reason is not None
        c.unscanned += d.text
        # a sentence has ended (or the holdback bound passed): where judging each delta gains nothing, text is
        # judged a sentence at a time
        due = final or len(c.unscanned) > self.holdback_chars or _SENTENCE_ENDS.search(c.unscanned) is not None
        if not self.holds:  # nothing acts: released at once, scanned a sentence at a time for the report
            if due:
                self._feed(c)
            return self._release(d.index, c, len(c.held))
        if not self.stream and not due:
            return Step()  # a client reading the answer at the end gains nothing from a judgement per delta
        text, c.unscanned = c.unscanned, ""
        leak, releasable = await asyncio.to_thread(self._advance, c, text, final)
        if leak is not None:
            return self._act(d.index, c, leak)
        if self.mode == "release":  # sent at once: a sentence judged a leak ends the choice (above)
            return self._release(d.index, c, len(c.held))
        at, cut = len(c.released) - c.offset, 0
        for i, h in enumerate(c.held):
            at += len(h.text)
            if at > releasable and not final:
                break
            cut = i + 1
        return self._release(d.index, c, cut) if cut else Step()

    def _judge_upto(self, c: _Choice, final: bool) -> int:
        """How much of the choice's output (since its scanners began) the semantic check may judge now: all of it
        at the end; else through the last sentence that has ended; else, past the holdback bound, through the last
        word that has ended."""
        out = c.released[c.offset:] + "".join(h.text for h in c.held)
        if final:
            return len(out)
        ends = [m.end() for m in _SENTENCE_ENDS.finditer(out, c.judged)]
        if ends:
            return ends[-1]
        spaces = [m.start() for m in re.finditer(r"\s", out[c.judged:])]
        return c.judged + spaces[-1] if spaces and len(out) - c.judged > self.holdback_chars else c.judged

    def _advance(self, c: _Choice, text: str, final: bool) -> tuple[Any, int]:
        """The delta scanned, then the semantic check through the last sentence that has ended (at the end, the
        end-of-output checks too: a name the output ends in), then how much may be released in hold mode: (the
        first acting leak or None, output characters releasable). Blocking: off the event loop."""
        leak = self._acting([x for s in c.scanners for x in s.feed(text)])
        if leak is not None:
            return leak, 0
        upto = self._judge_upto(c, final)
        found = [x for s in c.scanners for x in (s.finish() if final else s.review(upto))]
        c.judged = max(c.judged, upto)
        leak = self._acting(found)
        if leak is not None or self.mode == "release":
            return leak, c.judged
        return None, min((s.releasable(c.judged) for s in c.scanners), default=c.judged)

    @staticmethod
    def _feed(c: _Choice) -> None:
        """Per token, the lexical scan's cost grows with the policies (a stream with 100 report-only policies ran
        at 0.82x of the raw engine): text goes to the scanners in chunks."""
        for s in c.scanners:
            s.feed(c.unscanned)
        c.unscanned = ""

    def _acting(self, found: list[Any]) -> Any:
        return None if not self.holds else min((f for f in found if getattr(f, "act", False)),
                                              key=lambda f: f.start, default=None)

    def _release(self, index: int, c: _Choice, cut: int) -> Step:
        out, c.held = c.held[:cut], c.held[cut:]
        text = "".join(h.text for h in out)
        ids = [t for h in out for t in h.token_ids]
        logprobs = None if all(h.logprobs is None for h in out) else [x for h in out for x in (h.logprobs or [])]
        last = out[-1]
        c.released += text
        c.released_ids += ids
        c.over = last.finish_reason is not None
        return Step(ChoiceDelta(index, text, ids, logprobs, last.finish_reason, last.stop_reason))

    def _act(self, index: int, c: _Choice, leak: Any) -> Step:
        """Refuse the choice, or continue it steered by the leaking policy from the last released token."""
        c.held = []
        policy = self._policies.get(leak.policy)
        steer = (self.mode == "hold" and policy is not None and policy.action is Action.steer
                 and self.decisions[c.prompt].verdict is not Verdict.refuse
                 and policy.policy_key not in c.args.steer and len(c.switched) < MAX_SWITCHES)
        if not steer:
            c.over = c.blocked = True
            return Step(ChoiceDelta(index, "", [], None, CONTENT_FILTER))
        c.past += self._offset(c, [x for s in c.scanners for x in s.findings()])
        c.args = c.args.steering_also(policy.policy_key)
        c.switched.append(leak.policy)
        c.scanners = self._scanners(self._tail(c.prompt) + c.released)
        c.offset, c.judged = len(c.released), 0
        return Step(restart=(index, list(c.released_ids), c.args))

    @staticmethod
    def _offset(c: _Choice, found: list[Any]) -> list[Any]:
        for f in found:
            f.start += c.offset
        return found

    def all_over(self, n_choices: int) -> bool:
        return len(self.choices) == n_choices and all(c.over for c in self.choices.values())

    def finish(self) -> None:
        """The end-of-output checks (semantic leaks: embeds). Blocking: call off the event loop."""
        for c in self.choices.values():
            if c.unscanned:  # a choice that ended without a finish reason (aborted)
                self._feed(c)
            c.found = c.past + self._offset(c, [x for s in c.scanners for x in s.finish()])
            c.past = []

    def detail(self) -> GuardSummary:
        """The guard's whole account of the request (call `finish` first): for admins and viewers only."""
        decisions = [d.detail() for d in self.decisions]
        leaks = [LeakInfo(policy=lk.policy, kind=lk.kind, text=lk.text, start=lk.start,
                          score=None if lk.score is None else round(lk.score, 4), choice=index)
                 for index, c in sorted(self.choices.items()) for lk in c.found]
        switched = [k for c in self.choices.values() for k in c.switched]
        return GuardSummary(
            action=self.action().value,
            policies=list(dict.fromkeys([k for d in decisions for k in d.policies] + switched)),
            matches=[m for d in decisions for m in d.matches],
            failed_closed_policies=[f for d in decisions for f in d.failed_closed_policies],
            classifier_ms=max(d.classifier_ms for d in decisions), bypassed_by=decisions[0].bypassed_by,
            leaks=leaks, blocked=self.blocked(), steered=self.steered(),
            failed_closed=sum(c.failed_closed for c in self.choices.values()),
            shadow=[ShadowInfo(policy=m.policy.key, would=d.shadow_verdict.value, side="prompt")
                    for d in self.decisions for m in d.shadow] + self.shadow_actions(),
            prompts=decisions if len(decisions) > 1 else None,
            checked=[c.offset + c.judged for _, c in sorted(self.choices.items())]
            if self.holds and self.mode == "release" else None)

    def action(self) -> Verdict:
        """The request's action: the most severe of its prompts' decisions and of what the output guard did."""
        done = [Verdict.steer] * bool(self.steered()) + [Verdict.refuse] * bool(self.blocked())
        return aggregate(self.decisions, done)

    def shadow_actions(self) -> list[ShadowInfo]:
        """What shadow-mode policies would have done at the leaks they found (call `finish` first): each such
        policy once per choice, by its action."""
        out = {}
        for c in self.choices.values():
            for lk in c.found:
                policy = self._policies.get(lk.policy)
                if getattr(lk, "would", False) and policy is not None and policy.shadow:
                    out[(lk.policy, id(c))] = ShadowInfo(policy=lk.policy, would="refuse" if policy.action is
                                                         Action.refuse else "steer", side="output")
        return list(out.values())

    def blocked(self) -> list[int]:
        """Choices ended at a leak."""
        return [i for i, c in sorted(self.choices.items()) if c.blocked and not c.failed_closed]

    def steered(self) -> list[int]:
        """Choices switched to steered decoding at a leak."""
        return [i for i, c in sorted(self.choices.items()) if c.switched]


def aggregate(decisions: list[GuardDecision], more: list[Verdict] = ()) -> Verdict:
    """The most severe of the prompts' decisions (and `more`)."""
    order = [Verdict.passed, Verdict.steer, Verdict.refuse]
    return max([d.verdict for d in decisions] + list(more), key=order.index, default=Verdict.passed)
