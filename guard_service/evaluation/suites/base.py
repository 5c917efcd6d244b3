"""One shared shape for every evaluation suite: a new benchmark is a new file with a `Suite` subclass."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from guard_service.evaluation.client import Answer, EvalClient, gather

MODES = ("unguarded", "guarded")


class Check(BaseModel):
    """A target from the issue, measured: `value op target`."""

    name: str
    value: float | None
    op: Literal[">=", "<="]
    target: float

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.target if self.op == ">=" else self.value <= self.target


class SuiteResult(BaseModel):
    suite: str
    model: str
    metrics: dict[str, float | None]
    checks: list[Check] = Field(default_factory=list)
    # group -> mode -> value: drawn as grouped bars, written as a markdown table
    bars: dict[str, dict[str, float]] = Field(default_factory=dict)
    bars_label: str = ""
    # group -> share of its prompts the guard caught (prompt matched or output acted on): drawn beside the bars
    recall: dict[str, float] = Field(default_factory=dict)
    # mode -> (retain score, forget score): the forget/utility trade-off plot
    tradeoff: dict[str, tuple[float, float]] = Field(default_factory=dict)
    examples: list[dict[str, Any]] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    command: str = ""
    server: dict[str, Any] = Field(default_factory=dict)
    measured_at: str = ""


class EvalOptions(BaseModel):
    data: Path
    action: Literal["steer", "refuse"] | None = Field(None, description="override each suite's policy action")
    limit: int | None = Field(None, description="at most this many prompts per prompt set (smoke runs)")
    max_tokens: int = 80


@dataclass
class Prompts:
    """One prompt set of a suite (`Suite.ask`)."""

    prompts: list
    completion: bool = False  # /v1/completions instead of chat
    max_tokens: int | None = None  # else the run's --max-tokens


class Suite(ABC):
    name: ClassVar[str]
    default_action: ClassVar[str] = "steer"

    def __init__(self, options: EvalOptions):
        self.options = options
        self.data = options.data

    @property
    def action(self) -> str:
        return self.options.action or self.default_action

    def take(self, items: list) -> list:
        return items[: self.options.limit] if self.options.limit else items

    @abstractmethod
    async def run(self, client: EvalClient) -> SuiteResult: ...

    @contextlib.asynccontextmanager
    async def policies(self, client: EvalClient, specs: list[dict[str, Any]]) -> AsyncIterator[list[str]]:
        """The suite's unlearning requests, enforced while the block runs and revoked after it, so suites
        never see each other's policies."""
        ids: list[str] = []
        try:
            for spec in specs:
                ids.append(await client.submit({"requested_by": "guard-service eval",
                                                "reason": f"{self.name} evaluation", **spec}))
            await gather([client.wait_active(i) for i in ids], f"{self.name}: compile policies")
            yield ids
        finally:
            for request_id in ids:
                await client.revoke(request_id)

    async def ask(self, client: EvalClient, sets: dict[str, Prompts]) -> dict[str, dict[str, list[Answer]]]:
        """Every prompt of every set (a string, or a message list for multi-turn chat), asked unguarded and
        guarded, all at once: the client's semaphore bounds how many run together, so the engine batches them
        instead of finishing one set before the next begins (greedy answers do not depend on the batch: the
        same 48 prompts answered one at a time and 4, 16 or 48 at once came out identical). Label -> mode ->
        answers in the set's order."""
        calls, slots = [], []
        for label, s in sets.items():
            max_tokens = s.max_tokens or self.options.max_tokens
            for mode in MODES:
                ask = client.complete if s.completion else client.chat
                calls += [ask(p, guarded=mode == "guarded", max_tokens=max_tokens) for p in s.prompts]
                slots += [(label, mode)] * len(s.prompts)
        out: dict[str, dict[str, list[Answer]]] = {label: {mode: [] for mode in MODES} for label in sets}
        for (label, mode), answer in zip(slots, await gather(calls, f"{self.name}: {len(sets)} prompt sets"),
                                         strict=True):
            out[label][mode].append(answer)
        return out
