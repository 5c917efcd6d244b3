"""The one shape every guard component has. A component is one kind of protection (a name detector, the token-ban
trie, the provenance veto, the leak detector, ...), in one file, registered in `guards/__init__.py`.

A component takes part in any of these phases; every hook has a do-nothing default:
    compile        spec -> its part of the policy artifact (through the typed `ArtifactWriter`)
    load           API process: its part of one verified policy version and its request (`ActivePolicy.parts`)
    scan           prompt phase: one `Finding` (or None) about a prompt (`PromptText`), per policy
    output_scanner output phase: one `OutputScanner` per generated choice over every applicable policy
    load_worker    engine worker: its part of one policy version, on the engine's device
    row_guards     worker, per row: `RowGuard`s fed each token, asked for `Bans` each step
    dense_penalty  worker: a vocabulary-sized penalty a steering policy subtracts from every step's logits

How findings combine (frontend/classifier.py): a `match` finding matches alone; a `candidate` (a mid-range
semantic score) matches only beside a `match` or an `evidence` finding; evidence detectors run only then.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from guard_service.policy.artifacts import ArtifactWriter, ForbiddenItem, KnowledgeFile, PolicyArtifact
from guard_service.policy.request import UnlearningRequest

if TYPE_CHECKING:
    import torch

    from guard_service.policy.expansion import Expansion
    from guard_service.policy.tokenization import TokenClasses

T = TypeVar("T")


@dataclass
class CompileInput:
    """What the compiler works out once, for every component: the request, its knowledge expansion, and the
    forbidden strings (with every spelling) that most components start from."""

    policy_id: str
    version: int
    spec: UnlearningRequest
    expansion: Expansion
    items: list[ForbiddenItem]
    strings: list[str]  # every spelling variant of every item
    whole: set[str]  # the variants that spell a whole name of the target
    tokenizer: Any
    model_dir: Path
    indexes_dir: Path
    max_document_bytes: int
    documents: list[tuple[str, str]] = field(default_factory=list)  # (name, text): every protected document
    knowledge: KnowledgeFile = field(default_factory=lambda: KnowledgeFile())  # what they say about the target


class PromptText:
    """One prompt as the prompt detectors read it: the whole text of everything the model conditions on, the
    embeddings of its views (see frontend/classifier.py), and normal forms any detector derives once and every
    other policy's detector reuses (`derived`)."""

    def __init__(self, raw: str, vectors: np.ndarray):
        self.raw, self.vectors = raw, vectors
        self._derived: dict[str, Any] = {}

    def derived(self, name: str, make: Callable[[str], T]) -> T:
        if name not in self._derived:
            self._derived[name] = make(self.raw)
        return self._derived[name]


class Level(StrEnum):
    match = "match"  # enough alone
    candidate = "candidate"  # enough beside a match or evidence
    evidence = "evidence"  # corroborates a candidate


@dataclass
class Finding:
    level: Level | None  # None: nothing found, but `score` is worth reporting
    reason: str = ""
    score: float | None = None


@dataclass
class Compiled:
    """What a compile step reports: stats for the manifest, and (for the one component that has them) the
    classifier's calibration or the provenance index's description."""

    stats: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None


@dataclass(frozen=True)
class Bans:
    """One step's bans from one row guard. Read-only: a guard may hand out the same one every step."""

    hard: AbstractSet[int] = frozenset()
    soft: list[tuple[int, float]] = field(default_factory=list)  # (token, logit penalty)
    stop_word: bool = False  # ban every word-continuing token: a forbidden word must end here


class RowGuard:
    """One row's state for one component (worker). `seed` walks the prompt's tail before the first step."""

    def seed(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self.feed(t)

    def feed(self, token: int) -> None:
        raise NotImplementedError

    def bans(self) -> Bans:
        raise NotImplementedError


class OutputScanner:
    """One generated choice's scan (API process). Returns what it finds as it finds it; a finding with a true
    `act` attribute makes the output guard act on it (frontend/output_guard.py)."""

    def feed(self, text: str) -> list[Any]:
        """Cheap checks of each delta as it arrives (runs on the event loop)."""
        raise NotImplementedError

    def review(self, upto: int) -> list[Any]:
        """The costlier checks of the output up to `upto` characters, before the output guard releases it; may
        embed: call off the event loop."""
        return []

    def releasable(self, reviewed: int) -> int:
        """How many characters of the output may be released now, after `review` has read `reviewed` of them (the
        output guard releases the least any scanner allows). May embed: call off the event loop. By default what
        was reviewed: a scanner that can tell what is still at risk releases more."""
        return reviewed

    def findings(self) -> list[Any]:
        """Everything found so far, with no further checks."""
        return []

    def finish(self) -> list[Any]:
        """The end-of-output checks; returns everything found. May embed: call off the event loop."""
        return self.findings()


@dataclass(frozen=True)
class WorkerContext:
    vocab_size: int
    device: Any  # torch.device
    classes: TokenClasses | None  # the vocabulary's token classes (word rules); None if unavailable


class GuardComponent:
    name: ClassVar[str]
    stage: ClassVar[str] = ""  # compile-stage label in metrics and stats (defaults to the name)
    corroborates: ClassVar[bool] = False  # a prompt detector of `evidence`: run only to corroborate a candidate

    def compile(self, inp: CompileInput, out: ArtifactWriter) -> Compiled | None:
        return None

    # ---- API process -----------------------------------------------------------------------------
    def load(self, artifact: PolicyArtifact, spec: UnlearningRequest) -> Any:
        return None

    def scan(self, part: Any, prompt: PromptText) -> Finding | None:
        return None

    def output_scanner(self, parts: list[tuple[str, Any]], prompt_tail: str) -> OutputScanner | None:
        """`parts`: (policy key, this component's part) of every policy that applies to the request."""
        return None

    # ---- engine worker ---------------------------------------------------------------------------
    def load_worker(self, artifact: PolicyArtifact, ctx: WorkerContext) -> Any:
        return None

    def row_guards(self, steering: list[tuple[Any, Any]], watching: list[tuple[Any, Any]],
                   cache: MutableMapping[Any, Any]) -> list[RowGuard]:
        """`steering` / `watching`: (the worker's loaded policy, this component's part); `cache`: this
        component's scratch space for state shared by rows with the same policies (evicted with them, and
        beyond the most recent combinations)."""
        return []

    def dense_penalty(self, part: Any) -> torch.Tensor | None:
        return None
