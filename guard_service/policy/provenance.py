"""Suffix array over the protected documents' token ids (TraceAlign-style provenance index): building it.
Its files are the `provenance/` folder of the artifact format (policy/artifacts.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

TOKENIZE_CHUNK_CHARS = 1 << 16


def iter_path_documents(root: Path, allowed_root: Path) -> Iterator[tuple[str, str]]:
    """(name, text) for a file, or every .txt/.md/.json/.jsonl file below a folder; paths must stay inside
    `allowed_root` (the server's indexes/ directory)."""
    resolved = (allowed_root / root).resolve() if not root.is_absolute() else root.resolve()
    if not resolved.is_relative_to(allowed_root.resolve()):
        raise ValueError(f"protected path {root} is outside {allowed_root}")
    if not resolved.exists():
        raise FileNotFoundError(f"protected path {root} does not exist under {allowed_root}")
    files = [resolved] if resolved.is_file() else sorted(
        p for p in resolved.rglob("*") if p.suffix in {".txt", ".md", ".json", ".jsonl"} and p.is_file())
    for f in files:
        yield str(f.relative_to(allowed_root.resolve())), f.read_text(errors="replace")


def request_documents(inline: list[str], paths: list[str], indexes_dir: Path, max_bytes: int) -> list[tuple[str, str]]:
    """(name, text) of every document a request protects: its inline texts (`upload:<i>`) and its server-side
    paths, bounded by `max_bytes` in all. Read once per compile: the provenance index and the knowledge mined
    from them (policy/knowledge.py) both start here."""
    documents = [(f"upload:{i}", d) for i, d in enumerate(inline) if d.strip()]
    for p in paths:
        documents += list(iter_path_documents(Path(p), indexes_dir))
    total = sum(len(d) for _, d in documents)
    if total > max_bytes:
        raise ValueError(f"protected documents total {total} bytes, over {max_bytes}")
    return documents


def _tokenize(tokenizer: Any, text: str) -> list[int]:
    """Chunked at line breaks so a whole book streams through the tokenizer with bounded memory."""
    ids: list[int] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + TOKENIZE_CHUNK_CHARS)
        if end < len(text):
            cut = text.rfind("\n", start, end)
            end = cut + 1 if cut > start else end
        ids.extend(tokenizer.encode(text[start:end], add_special_tokens=False))
        start = end
    return ids


@dataclass
class ProvenanceIndex:
    tokens: np.ndarray
    sa: np.ndarray
    doc_starts: list[int]
    doc_names: list[str]
    stats: dict[str, Any]


def build(tokenizer: Any, documents: Iterable[tuple[str, str]], separator: int,
          total_chars: int | None = None) -> ProvenanceIndex:
    from pydivsufsort import divsufsort

    names: list[str] = []
    starts: list[int] = []
    parts: list[np.ndarray] = []
    n = 0
    with tqdm(total=total_chars, unit="char", unit_scale=True, desc="provenance: tokenize") as bar:
        for name, text in documents:
            ids = np.asarray(_tokenize(tokenizer, text) + [separator], dtype=np.int64)
            names.append(name)
            starts.append(n)
            parts.append(ids)
            n += len(ids)
            bar.update(len(text))
    vocab = len(tokenizer)
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max else np.uint32
    tokens = np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)
    sa = divsufsort(tokens.astype(np.int32) if dtype == np.uint32 else tokens) if len(tokens) else np.zeros(0)
    sa = sa.astype(np.int32 if len(tokens) < 2**31 else np.int64)
    return ProvenanceIndex(tokens, sa, starts, names, {
        "documents": len(names), "tokens": int(len(tokens)), "separator": separator,
        "bytes_per_token": (tokens.nbytes + sa.nbytes) / max(1, len(tokens))})
