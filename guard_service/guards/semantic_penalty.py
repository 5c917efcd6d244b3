"""Semantic penalty (worker, steered rows): a vocabulary-sized logit penalty on tokens whose input embedding is
near a forbidden string's word-carrying first token, and a fixed one on those first tokens themselves. Hard bans
stop exact spellings; this pushes the model off near-synonym pieces and other spellings of the same names. One
dense vector per policy, summed per policy combination and subtracted from all of a combination's rows with
one `index_add_` (worker/logits_processor.py). Compiles semantic_ids, semantic_weights and anchor_ids."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from guard_service.guards.base import Compiled, CompileInput, GuardComponent, WorkerContext
from guard_service.policy import semantic
from guard_service.policy.artifacts import ArtifactWriter, PolicyArtifact

if TYPE_CHECKING:
    import torch


class SemanticPenalty(GuardComponent):
    name = "semantic_penalty"
    stage = "semantic"

    def compile(self, inp: CompileInput, out: ArtifactWriter) -> Compiled:
        tok = inp.tokenizer
        embeddings = semantic.input_embeddings(str(inp.model_dir))
        anchors = semantic.anchor_tokens(tok, [i.text for i in inp.items])
        vocab = min(len(tok), embeddings.shape[0])
        ids, weights = semantic.penalty_weights(embeddings, anchors, inp.spec.strength.semantic_threshold,
                                                semantic.wordlike(tok, vocab), list(tok.all_special_ids))
        out.write_semantic(ids, weights, anchors)
        return Compiled(stats={"anchors": len(anchors), "semantic_tokens": int(len(ids))})

    def load_worker(self, artifact: PolicyArtifact, ctx: WorkerContext) -> torch.Tensor:
        import torch

        strength = artifact.manifest.strength
        penalty = np.zeros(ctx.vocab_size, dtype=np.float32)
        ids, weights, anchors = artifact.semantic()
        keep = ids < ctx.vocab_size
        penalty[ids[keep]] = weights[keep] * float(strength["semantic_penalty"])
        anchors = anchors[anchors < ctx.vocab_size]
        penalty[anchors] = np.maximum(penalty[anchors], float(strength["first_token_penalty"]))
        return torch.from_numpy(penalty).to(ctx.device)

    def dense_penalty(self, part: Any) -> torch.Tensor:
        return part
