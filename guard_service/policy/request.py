"""The knowledge-level unlearning request an operator submits, and its PATCH form.

An operator names *what* must be forgotten; the compiler works out which strings, tokens and prompts that
means for the served model.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from guard_service.validation import ValidText

NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]
PathText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300,
                                            pattern=r"^[^\x00]+$")]


class TargetKind(StrEnum):
    entity = "entity"
    topic = "topic"
    document = "document"
    capability = "capability"


class Action(StrEnum):
    refuse = "refuse"
    steer = "steer"


# What the output guard does when it finds a policy's knowledge in generated text: act (refuse the choice, or
# steer it from the last clean point; frontend/output_guard.py) or only report it. "block", the old name of
# acting, is still read (stored specs and clients written before it was renamed).
OnLeak = Annotated[Literal["act", "report"], BeforeValidator(lambda v: "act" if v == "block" else v)]
# What a policy does to traffic: enforce it, or only score it (shadow: compiled and loaded like any other,
# matched and scanned on live traffic, counted and audited as what it would have done, enforced nowhere).
Mode = Literal["enforce", "shadow"]


class Strength(BaseModel):
    """Knobs with defaults that suit a small model; each is documented where the runtime uses it."""

    model_config = ConfigDict(extra="forbid")

    ban_forbidden: bool = Field(True, description="hard-ban the next token of a matched forbidden sequence")
    first_token_penalty: float = Field(8.0, ge=0, le=100, description="logit penalty on each sequence's first token")
    semantic_penalty: float = Field(
        4.0, ge=0, le=100, description="max logit penalty for tokens close to forbidden ones")
    semantic_threshold: float = Field(0.5, ge=0, le=1, description="cosine similarity below which no penalty applies")
    classifier_fpr: float = Field(0.01, gt=0, lt=0.5, description="false-positive rate the threshold is calibrated to")
    refuse_threshold: float | None = Field(None, ge=0, le=1, description="score above which steer becomes refuse")
    steer_threshold: float | None = Field(None, ge=0, le=1, description="override of the calibrated threshold")
    provenance_min_span: int = Field(8, ge=2, le=256, description="L: longest verbatim protected span allowed + 1")
    documents_as: Literal["protected", "knowledge"] = Field(
        "protected", description="protected: the documents are text not to be copied (the provenance veto) and "
        "the policy's knowledge of its target; knowledge: only the latter, for public text (Wikipedia-style "
        "passages share 8-token spans with ordinary answers about the same subjects)")
    expand_knowledge: bool | None = Field(
        None, description="ask the model for aliases/facts; default on for entity/topic")
    mangled_names: int | None = Field(
        None, ge=50, le=100, description="opt-in: a name no one known, this close (rapidfuzz ratio, 0-100) to a "
        "whole name of the target, corroborates a mid-range score as the name would (guards/unknown_name.py); "
        "off by default: near-namesakes score as high as mangled names")


class Scope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ShortText] = Field(default_factory=list, description="served model names; empty = all")
    api_keys: list[ShortText] = Field(
        default_factory=list, description="tenant names (keys of GUARD_API_KEYS, never the keys); empty = all")


class UnlearningRequest(ValidText):
    model_config = ConfigDict(extra="forbid")

    target: ShortText
    kind: TargetKind = TargetKind.entity
    aliases: list[ShortText] = Field(default_factory=list, max_length=200)
    description: Annotated[str, StringConstraints(strip_whitespace=True, max_length=5000)] = ""
    facts: list[NonEmpty] = Field(default_factory=list, max_length=500)
    example_prompts: list[NonEmpty] = Field(default_factory=list, max_length=500)
    protected_documents: list[str] = Field(default_factory=list, max_length=1000)
    protected_paths: list[PathText] = Field(
        default_factory=list, description="server-side files or folders under the indexes/ directory")
    retain_examples: list[NonEmpty] = Field(default_factory=list, max_length=500)
    action: Action = Action.steer
    on_leak: OnLeak = Field(
        "act", description="act: a refuse policy ends a choice whose output leaks (content_filter), a steer policy "
        "continues it under steered decoding from the last clean sentence; report: only record the leak")
    mode: Mode = Field("enforce", description="shadow: scored on live traffic, counted in metrics and audited as "
                       "would-have-steered / would-have-refused, enforced nowhere; PATCH mode=enforce promotes it")
    strength: Strength = Field(default_factory=Strength)
    scope: Scope = Field(default_factory=Scope)
    expires_at: datetime | None = None
    requested_by: ShortText = "unknown"
    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)] = ""

    @field_validator("expires_at")
    @classmethod
    def _in_future(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        """A new request must expire in the future; a stored one (`from_version_spec`) may have expired since:
        it still loads, and the registry stops enforcing it at that instant."""
        if value is None:
            return None
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
        if value <= datetime.now(UTC) and not (info.context or {}).get("stored"):
            raise ValueError("expires_at must be in the future")
        return value

    @model_validator(mode="after")
    def _aliases_differ(self) -> UnlearningRequest:
        self.aliases = [a for a in dict.fromkeys(self.aliases) if a.casefold() != self.target.casefold()]
        return self

    def expand_knowledge(self) -> bool:
        if self.strength.expand_knowledge is not None:
            return self.strength.expand_knowledge
        return self.kind in (TargetKind.entity, TargetKind.topic)


class UnlearningPatch(ValidText):
    """Fields to change; anything left out keeps its value. `remove_expanded` drops reviewed expansions."""

    model_config = ConfigDict(extra="forbid")

    aliases: list[ShortText] | None = None
    description: str | None = None
    facts: list[NonEmpty] | None = None
    example_prompts: list[NonEmpty] | None = None
    protected_documents: list[str] | None = None
    retain_examples: list[NonEmpty] | None = None
    action: Action | None = None
    on_leak: OnLeak | None = None
    mode: Mode | None = None
    strength: Strength | None = None
    scope: Scope | None = None
    expires_at: datetime | None = None
    reason: str | None = None
    remove_expanded: list[str] = Field(default_factory=list, description=(
        "expanded items and cross-lingual forms (`sound:<name>`) to exclude from now on"))


def from_version_spec(stored: dict) -> tuple[UnlearningRequest, list[str], bool]:
    """A stored version spec is the request plus the store's bookkeeping: the expanded items an operator
    removed, and whether this version is the compiler's knowledge-expansion follow-up."""
    spec = {k: v for k, v in stored.items() if k not in ("removed_expanded", "_expand")}
    return (UnlearningRequest.model_validate(spec, context={"stored": True}), list(stored.get("removed_expanded", [])),
            bool(stored.get("_expand", False)))
