"""Compile one version of an unlearning request into its artifact folder (format: `artifacts.py`)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from guard_service.embedding import EMBEDDER_NAME
from guard_service.policy import classifier_data, forbidden, provenance, semantic, tokenization
from guard_service.policy.artifacts import ArtifactWriter, Manifest, model_identity, tokenizer_identity
from guard_service.policy.expansion import AskModel, Expansion, expand
from guard_service.policy.request import UnlearningRequest

log = logging.getLogger(__name__)
CONFIDENT = 0.85  # a semantic score this high matches without lexical evidence


@dataclass
class CompileContext:
    policies_dir: Path
    indexes_dir: Path
    model_dir: Path
    served_model_name: str
    tokenizer: Any
    ask_model: AskModel | None = None
    max_document_bytes: int = 64 * 1024 * 1024


def warm_caches(ctx: CompileContext) -> None:
    """Per-model work every compile shares (vocab surfaces and their extensions, embeddings, the negative bank),
    done once up front so the first request after start-up is as fast as the rest."""
    began = time.perf_counter()
    tokenization.surfaces(ctx.tokenizer)
    tokenization.extension_index(ctx.tokenizer)
    embeddings = semantic.input_embeddings(str(ctx.model_dir))
    semantic.wordlike(ctx.tokenizer, min(len(ctx.tokenizer), embeddings.shape[0]))
    classifier_data.negative_vectors()
    log.info("compiler caches warm in %.2fs", time.perf_counter() - began)


async def compile_version(ctx: CompileContext, policy_id: str, version: int, spec: UnlearningRequest,
                          removed_expanded: list[str], expand_knowledge: bool) -> Manifest:
    began = time.perf_counter()
    expansion = Expansion()
    if expand_knowledge and ctx.ask_model is not None:
        known = [spec.target, *spec.aliases]
        expansion = (await expand(ctx.ask_model, spec.target, spec.description, known)).without(removed_expanded)
    expand_s = time.perf_counter() - began
    manifest = await asyncio.to_thread(_build, ctx, policy_id, version, spec, expansion)
    manifest.stats["seconds"]["expansion"] = round(expand_s, 3)
    manifest.stats["seconds"]["total"] = round(time.perf_counter() - began, 3)
    manifest.stats["knowledge_expansion"] = expand_knowledge
    return manifest


def _build(ctx: CompileContext, policy_id: str, version: int, spec: UnlearningRequest,
           expansion: Expansion) -> Manifest:
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    tok = ctx.tokenizer
    writer = ArtifactWriter(ctx.policies_dir, policy_id, version)
    try:
        items = forbidden.collect(spec.target, spec.aliases, spec.facts, spec.description,
                                  expansion.names, expansion.facts)
        strings = sorted({v for item in items for v in forbidden.variants(item.text)})
        whole = {v for item in items if forbidden.is_name(item) for v in forbidden.variants(item.text)}
        writer.json("forbidden.json", {"items": [{"text": i.text, "origin": i.origin, "split": i.split} for i in items],
                                       "variants": strings, "expansion": expansion.as_dict()})
        lap("forbidden_strings")

        by_string = tokenization.sequences_for(tok, strings)
        strict = set().union(*(by_string[s] for s in whole))
        # canonical spellings of whole names, final piece lengthened: also banned everywhere
        strict |= {e for s in whole for form in (s, " " + s)
                   for e in tokenization.extended(tok, tuple(tok.encode(form, add_special_tokens=False)))}
        sequences = sorted(set().union(strict, *by_string.values()))
        lengths = np.asarray([len(s) for s in sequences], dtype=np.int64)
        writer.array("trie_tokens.npy", np.asarray([t for s in sequences for t in s], dtype=np.int32))
        writer.array("trie_offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        writer.array("trie_whole.npy", np.asarray([s in strict for s in sequences], dtype=np.bool_))
        lap("trie")

        embeddings = semantic.input_embeddings(str(ctx.model_dir))
        anchors = semantic.anchor_tokens(tok, [i.text for i in items])
        vocab = min(len(tok), embeddings.shape[0])
        ids, weights = semantic.penalty_weights(embeddings, anchors, spec.strength.semantic_threshold,
                                                semantic.wordlike(tok, vocab), list(tok.all_special_ids))
        writer.array("semantic_ids.npy", ids)
        writer.array("semantic_weights.npy", weights)
        writer.array("anchor_ids.npy", np.asarray(anchors, dtype=np.int64))
        lap("semantic")

        statements = [*spec.facts, *spec.example_prompts, *expansion.facts]
        clf = classifier_data.build(spec.target, spec.kind, [*spec.aliases, *expansion.names], statements,
                                    spec.retain_examples, spec.strength.classifier_fpr,
                                    spec.strength.steer_threshold)
        faiss.write_index(clf.index, str(writer.path("classifier.faiss")))
        refuse_at = spec.strength.refuse_threshold or min(0.95, clf.threshold + 0.5 * (1 - clf.threshold))
        names = [spec.target, *spec.aliases, *expansion.names]
        known = [*spec.facts, spec.description, *expansion.facts]
        evidence = forbidden.evidence_phrases(names, known)
        writer.json("classifier.json", {"texts": clf.texts, "threshold": clf.threshold, "refuse_threshold": refuse_at,
                                        "aliases": names, "facts": [*spec.facts, *expansion.facts],
                                        "evidence": evidence,
                                        "weak_evidence": forbidden.weak_evidence_words(names, known),
                                        "confident_threshold": max(refuse_at, CONFIDENT)})
        lap("classifier")

        prov = None
        documents = [(f"upload:{i}", d) for i, d in enumerate(spec.protected_documents) if d.strip()]
        for p in spec.protected_paths:
            documents += list(provenance.iter_path_documents(Path(p), ctx.indexes_dir))
        if documents:
            total = sum(len(d) for _, d in documents)
            if total > ctx.max_document_bytes:
                raise ValueError(f"protected documents total {total} bytes, over {ctx.max_document_bytes}")
            separator = int(tok.eos_token_id if tok.eos_token_id is not None else 0)
            prov = provenance.build(writer.path("provenance"), tok, documents, separator, total)
            prov["min_span"] = spec.strength.provenance_min_span
        lap("provenance")

        manifest = Manifest(
            policy_id=policy_id, version=version, target=spec.target, action=spec.action.value,
            strength=spec.strength.model_dump(), tokenizer=tokenizer_identity(ctx.model_dir, ctx.tokenizer),
            model=model_identity(ctx.model_dir, ctx.served_model_name),
            embedder=EMBEDDER_NAME, calibration={**clf.calibration, "refuse_threshold": refuse_at},
            provenance=prov,
            stats={"forbidden_items": len(items), "variants": len(strings), "sequences": len(sequences),
                   "anchors": len(anchors), "semantic_tokens": int(len(ids)), "classifier_texts": len(clf.texts),
                   "expanded_names": len(expansion.names), "expanded_facts": len(expansion.facts),
                   "seconds": timings})
        writer.publish(manifest)
        return manifest
    except BaseException:
        writer.discard()
        raise
