"""The shared sentence embedder: concurrent calls share batches and each caller gets exactly its own vectors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from guard_service import embedding


def test_concurrent_calls_get_their_own_vectors() -> None:
    texts = [f"Author number {i} wrote {i % 7 + 1} novels about the sea and the mountains." for i in range(48)]
    alone = np.stack([embedding.embed([t])[0] for t in texts])
    with ThreadPoolExecutor(max_workers=12) as pool:
        together = list(pool.map(lambda i: embedding.embed(texts[i:i + 2]), range(0, len(texts), 2)))
    assert np.allclose(np.concatenate(together), alone, atol=1e-5)
    assert np.allclose(np.linalg.norm(alone, axis=1), 1.0, atol=1e-5)
    assert embedding.embed([]).shape == (0, embedding.dimension())


def test_a_failing_batch_fails_every_caller_and_the_next_one_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    real = embedding._embed_now

    def broken(texts: list[str]) -> np.ndarray:
        raise RuntimeError("embedder failed")

    monkeypatch.setattr(embedding, "_embed_now", broken)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(embedding.embed, [f"sentence {i}"]) for i in range(8)]
    for f in futures:
        with pytest.raises(RuntimeError, match="embedder failed"):
            f.result()
    monkeypatch.setattr(embedding, "_embed_now", real)
    assert embedding.embed(["it works again"]).shape == (1, embedding.dimension())
