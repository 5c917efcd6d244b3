"""Vocab-sized semantic penalty: tokens whose input embedding is close to a forbidden anchor token.

Hard bans stop exact spellings; this soft penalty pushes the model away from near-synonym pieces and other
spellings of the same names. Stored sparse (ids + weights in [0, 1]); the runtime scales it by strength.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np

_EMBED_KEYS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "tok_embeddings.weight")


@functools.lru_cache(maxsize=2)
def input_embeddings(model_dir: str) -> np.ndarray:
    """The model's input embedding matrix, centred and L2-normalised, read straight from its safetensors files.

    Centring removes the common direction every token shares (without it all cosines sit near 0.5)."""
    import torch
    from safetensors import safe_open

    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            key = next((k for k in fh.keys() if k.endswith(_EMBED_KEYS)), None)  # noqa: SIM118
            if key is not None:
                matrix = fh.get_tensor(key).to(torch.float32)
                matrix = torch.nn.functional.normalize(matrix - matrix.mean(dim=0), dim=1)
                return matrix.numpy()
    raise FileNotFoundError(f"no input embedding tensor in {model_dir}/*.safetensors")


def anchor_tokens(tokenizer: Any, strings: list[str]) -> list[int]:
    """First token of each string's canonical spelling (with and without a leading space), when that token
    carries the word (3+ letters) rather than punctuation or an initial."""
    anchors: set[int] = set()
    for s in strings:
        for form in (s, " " + s):
            ids = tokenizer.encode(form, add_special_tokens=False)
            if ids and len(re.sub(r"[^A-Za-z]", "", tokenizer.decode(ids[:1]))) >= 3:
                anchors.add(int(ids[0]))
    return sorted(anchors)


@functools.lru_cache(maxsize=4)
def wordlike(tokenizer: Any, vocab_size: int) -> np.ndarray:
    """Mask of tokens with 3+ letters: short pieces and punctuation sit near every anchor in embedding space
    and carry no knowledge, so they are never penalised semantically."""
    texts = tokenizer.batch_decode([[i] for i in range(vocab_size)])
    return np.array([len(re.sub(r"[^A-Za-z]", "", t)) >= 3 for t in texts], dtype=bool)


def penalty_weights(embeddings: np.ndarray, anchors: list[int], threshold: float, eligible: np.ndarray,
                    exempt: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Weight = (cos - threshold) / (1 - threshold) for the best anchor, kept where cos > threshold.
    `exempt` (special tokens: EOS above all) never gets a penalty, so a steered answer can always end."""
    if not anchors:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    sims = embeddings[: len(eligible)] @ embeddings[anchors].T  # [V, A]
    best = np.where(eligible, sims.max(axis=1), -1.0)
    best[[e for e in exempt if e < len(best)]] = -1.0
    ids = np.nonzero(best > threshold)[0]
    weights = ((best[ids] - threshold) / max(1e-6, 1 - threshold)).clip(0, 1)
    weights[np.isin(ids, anchors)] = 1.0
    return ids.astype(np.int64), weights.astype(np.float32)
