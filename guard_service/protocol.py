"""The contract between the API process and the engine worker: which policy versions a row runs under, and how
the worker says it failed a row closed. One owner: both sides build and parse through these types.

Per request, vLLM carries a flat dict (`SamplingParams.extra_args`, msgpack'd to the worker):
    guard_policies  "pol_a@3,pol_b@1"  the versions the prompt classifier matched: steered
    guard_watch     "pol_c@2"          every other applicable version: watch mode (verbatim protections only)
    guard_marker    17                 the token the worker forces when it must end a row closed
Per process, the artifact root reaches the worker once, through the engine's `additional_config`
(`ROOT_CONFIG_KEY`), not in every request; so does how often it trims its heap (`HEAP_TRIM_CONFIG_KEY`).

Failing closed is explicit: the API puts the marker token in the request's `stop_token_ids`, the worker never
lets a guarded row produce it except to end the row, so vLLM reports `stop_reason == marker` exactly for rows
the worker failed closed (never for a legitimate short answer or an engine abort).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

POLICIES_ARG = "guard_policies"
WATCH_ARG = "guard_watch"
MARKER_ARG = "guard_marker"
ROOT_CONFIG_KEY = "guard_policies_root"
HEAP_TRIM_CONFIG_KEY = "guard_heap_trim_s"
PROCESSOR_FQCN = "guard_service.worker.logits_processor:GuardLogitsProcessor"
WORKER_EXTENSION = "guard_service.worker.extension.GuardWorkerExtension"


@dataclass(frozen=True, order=True)
class PolicyKey:
    """One immutable version of one policy: `pol_x@3`."""

    id: str
    version: int

    def __str__(self) -> str:
        return f"{self.id}@{self.version}"

    @classmethod
    def parse(cls, text: str) -> PolicyKey:
        policy_id, _, version = text.strip().rpartition("@")
        if not policy_id or not version.isdigit():
            raise ValueError(f"malformed guard policy key {text!r}")
        return cls(policy_id, int(version))


def _keys(text: Any) -> tuple[PolicyKey, ...]:
    return tuple(PolicyKey.parse(part) for part in str(text or "").split(",") if part.strip())


@dataclass(frozen=True)
class GuardArgs:
    steer: tuple[PolicyKey, ...] = ()
    watch: tuple[PolicyKey, ...] = ()
    marker: int | None = None

    def steering_also(self, key: PolicyKey) -> GuardArgs:
        """These args with `key` moved from watching to steering (the output guard's switch on a leak)."""
        return GuardArgs((*self.steer, key) if key not in self.steer else self.steer,
                         tuple(k for k in self.watch if k != key), self.marker)

    def to_extra_args(self) -> dict[str, Any] | None:
        if not self.steer and not self.watch:
            return None
        args: dict[str, Any] = {}
        if self.steer:
            args[POLICIES_ARG] = ",".join(map(str, self.steer))
        if self.watch:
            args[WATCH_ARG] = ",".join(map(str, self.watch))
        if self.marker is not None:
            args[MARKER_ARG] = self.marker
        return args

    def apply(self, params: Any) -> Any:
        """Put these args on a vLLM `SamplingParams` (a copy being prepared for a request); returns it."""
        other = {k: v for k, v in (params.extra_args or {}).items() if k not in (POLICIES_ARG, WATCH_ARG, MARKER_ARG)}
        params.extra_args = {**other, **(self.to_extra_args() or {})} or None
        return params

    @classmethod
    def from_extra_args(cls, extra: dict[str, Any] | None) -> GuardArgs | None:
        """None for an unguarded row; ValueError for malformed args."""
        extra = extra or {}
        steer, watch = _keys(extra.get(POLICIES_ARG)), _keys(extra.get(WATCH_ARG))
        if not steer and not watch:
            return None
        marker = extra.get(MARKER_ARG)
        if marker is not None and not isinstance(marker, int):
            raise ValueError(f"malformed {MARKER_ARG} {marker!r}")
        return cls(steer, tuple(k for k in watch if k not in steer), marker)


def fail_closed_marker(tokenizer: Any) -> int | None:
    """A special token a model never needs to generate (its BOS, else another special that is neither EOS nor
    padding). None when the tokenizer has none: failed rows then end at EOS and look like an empty answer."""
    taken = {getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "pad_token_id", None)}
    candidates = [getattr(tokenizer, "bos_token_id", None), *getattr(tokenizer, "all_special_ids", [])]
    return next((int(t) for t in candidates if t is not None and t not in taken), None)
