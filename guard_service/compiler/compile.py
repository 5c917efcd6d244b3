"""Compile one version of an unlearning request into its artifact folder (format: policy/artifacts.py): knowledge
expansion (asks the served model), the forbidden strings every component starts from, then each registered guard
component's own compile step (guards/)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guard_service.embedding import EMBEDDER_NAME
from guard_service.guards import COMPONENTS
from guard_service.guards.base import CompileInput, GuardComponent
from guard_service.policy import classifier_data, forbidden, knowledge, provenance, semantic, sound, tokenization
from guard_service.policy.artifacts import (
    ArtifactWriter,
    ForbiddenFile,
    ForbiddenItem,
    Manifest,
    explain_write_error,
    model_identity,
    tokenizer_identity,
)
from guard_service.policy.expansion import AskModel, Expansion, expand
from guard_service.policy.request import UnlearningRequest

log = logging.getLogger(__name__)


@dataclass
class CompileContext:
    policies_dir: Path
    indexes_dir: Path
    model_dir: Path
    served_model_name: str
    tokenizer: Any
    ask_model: AskModel | None = None
    max_document_bytes: int = 64 * 1024 * 1024


def warm_model_caches(model_dir: Path) -> None:
    """The per-model work every compile shares that needs no tokenizer (the model's input embeddings, the
    negative bank): done while the engine starts, before its tokenizer exists."""
    began = time.perf_counter()
    semantic.input_embeddings(str(model_dir))
    classifier_data.negative_vectors()
    log.info("compiler model caches warm in %.2fs", time.perf_counter() - began)


def warm_caches(ctx: CompileContext) -> None:
    """Per-model work every compile shares (vocab surfaces and their extensions, embeddings, the negative bank),
    done once up front so the first request after start-up is as fast as the rest."""
    began = time.perf_counter()
    warm_model_caches(ctx.model_dir)  # cached: already done when it ran while the engine started
    tokenization.surfaces(ctx.tokenizer)
    tokenization.extension_index(ctx.tokenizer)
    embeddings = semantic.input_embeddings(str(ctx.model_dir))
    semantic.wordlike(ctx.tokenizer, min(len(ctx.tokenizer), embeddings.shape[0]))
    log.info("compiler caches warm in %.2fs", time.perf_counter() - began)


async def compile_version(ctx: CompileContext, policy_id: str, version: int, spec: UnlearningRequest,
                          removed_expanded: list[str], expand_knowledge: bool) -> Manifest:
    began = time.perf_counter()
    expansion = Expansion()
    if expand_knowledge and ctx.ask_model is not None:
        known = [spec.target, *spec.aliases]
        expansion = (await expand(ctx.ask_model, spec.target, spec.description, known)).without(removed_expanded)
    expand_s = time.perf_counter() - began
    manifest = await asyncio.to_thread(_build, ctx, policy_id, version, spec, expansion, removed_expanded)
    manifest.stats["seconds"]["expansion"] = round(expand_s, 3)
    manifest.stats["seconds"]["total"] = round(time.perf_counter() - began, 3)
    manifest.stats["knowledge_expansion"] = expand_knowledge
    return manifest


def _build(ctx: CompileContext, policy_id: str, version: int, spec: UnlearningRequest,
           expansion: Expansion, removed: list[str]) -> Manifest:
    """The shared first stage (forbidden strings and their spellings), then every registered guard
    component's compile step, timed one by one; all written through one `ArtifactWriter`, published at once."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    writer = ArtifactWriter(ctx.policies_dir, policy_id, version)
    try:
        items = forbidden.collect(spec.target, spec.aliases, spec.facts, spec.description,
                                  expansion.names, expansion.facts)
        strings = sorted({v for item in items for v in forbidden.variants(item.text)})
        whole = {v for item in items if forbidden.is_name(item) for v in forbidden.variants(item.text)}
        forbidden_items = [ForbiddenItem(text=i.text, origin=i.origin, split=i.split) for i in items]
        crosslingual = sound.forms((i.text for i in items if forbidden.is_name(i)), removed)
        writer.write_forbidden(ForbiddenFile(items=forbidden_items, variants=strings, expansion=expansion.as_dict(),
                                             crosslingual=crosslingual))
        lap("forbidden_strings")

        documents = provenance.request_documents(spec.protected_documents, spec.protected_paths, ctx.indexes_dir,
                                                 ctx.max_document_bytes)
        mined = knowledge.mine(spec.target, [*spec.aliases, *expansion.names], spec.description, documents, removed,
                               expansion.works)
        known = knowledge.as_file(mined)
        writer.write_knowledge(known)
        lap("knowledge")

        inp = CompileInput(policy_id=policy_id, version=version, spec=spec, expansion=expansion,
                           items=forbidden_items, strings=strings, whole=whole, tokenizer=ctx.tokenizer,
                           model_dir=ctx.model_dir, indexes_dir=ctx.indexes_dir,
                           max_document_bytes=ctx.max_document_bytes, documents=documents, knowledge=known)
        stats: dict[str, Any] = {"forbidden_items": len(items), "variants": len(strings),
                                 "crosslingual_forms": len(crosslingual),
                                 "expanded_names": len(expansion.names), "expanded_facts": len(expansion.facts),
                                 "mined_terms": len(mined.terms), "mined_facts": len(mined.facts)}
        calibration: dict[str, Any] = {}
        prov = None
        for component in COMPONENTS:
            if type(component).compile is GuardComponent.compile:
                continue  # nothing to compile (it reads what others wrote)
            compiled = component.compile(inp, writer)
            if compiled is not None:
                stats.update(compiled.stats)
                calibration.update(compiled.calibration or {})
                prov = compiled.provenance or prov
            lap(component.stage or component.name)

        manifest = Manifest(
            policy_id=policy_id, version=version, target=spec.target, action=spec.action.value,
            strength=spec.strength.model_dump(), tokenizer=tokenizer_identity(ctx.model_dir, ctx.tokenizer),
            model=model_identity(ctx.model_dir, ctx.served_model_name), embedder=EMBEDDER_NAME,
            calibration=calibration, provenance=prov, stats={**stats, "seconds": timings})
        writer.publish(manifest)
        return manifest
    except OSError as exc:
        clear = explain_write_error(exc, ctx.policies_dir)
        writer.discard()
        if clear is exc:
            raise
        raise clear from exc
    except BaseException:
        writer.discard()
        raise
