"""The one on-disk format of a compiled policy. The compiler writes it, every runtime reads it.

    policies/<policy_id>/v<version>/
        manifest.json            identity, files with sha256 and size, tokenizer/model identity, stats
        forbidden.json           forbidden strings (operator-given and expanded, each with its origin)
        trie_tokens.npy          int32, all forbidden token sequences concatenated
        trie_offsets.npy         int64, sequence i is trie_tokens[offsets[i]:offsets[i+1]]
        trie_whole.npy           bool, sequence i spells a whole name (not one word split off a longer one);
                                 these are banned on every request ("watch" mode), the rest only when steering
        semantic_ids.npy         int64, vocab ids that get a semantic penalty (sparse)
        semantic_weights.npy     float32, penalty in [0, 1] per id (scaled by strength at runtime)
        classifier.faiss         faiss inner-product index over L2-normalised prompt embeddings
        classifier.json          the texts behind the index rows, threshold, calibration
        provenance/              optional: suffix array over protected documents (issue 6)

Versions are immutable: a new request version is a new folder, written to a temp dir beside it and renamed
into place, so readers (other replicas, engine workers) never see half a policy and never need invalidation.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class FileEntry(BaseModel):
    sha256: str
    bytes: int


class Manifest(BaseModel):
    format_version: int = FORMAT_VERSION
    policy_id: str
    version: int
    target: str
    action: str
    strength: dict[str, Any]
    tokenizer: dict[str, Any]
    model: dict[str, Any]
    embedder: str
    files: dict[str, FileEntry] = Field(default_factory=dict)
    stats: dict[str, Any] = Field(default_factory=dict)
    calibration: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] | None = None


def version_dir(root: Path, policy_id: str, version: int) -> Path:
    return root / policy_id / f"v{version}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ArtifactWriter:
    """Collect files in a temp dir, then `publish()` them atomically as one version folder."""

    def __init__(self, root: Path, policy_id: str, version: int):
        self.final = version_dir(root, policy_id, version)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f".v{version}-", dir=self.final.parent))

    def path(self, name: str) -> Path:
        p = self.dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def array(self, name: str, value: np.ndarray) -> None:
        np.save(self.path(name), value, allow_pickle=False)

    def json(self, name: str, value: Any) -> None:
        self.path(name).write_text(json.dumps(value, indent=1, ensure_ascii=False))

    def publish(self, manifest: Manifest) -> Path:
        files = sorted(p for p in self.dir.rglob("*") if p.is_file())
        manifest.files = {str(p.relative_to(self.dir)): FileEntry(sha256=sha256_file(p), bytes=p.stat().st_size)
                          for p in files}
        (self.dir / MANIFEST).write_text(manifest.model_dump_json(indent=1))
        self.dir.chmod(0o755)
        if self.final.exists():  # a crashed earlier compile of the same version never became active
            shutil.rmtree(self.final)
        os.replace(self.dir, self.final)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def read_manifest(path: Path) -> Manifest:
    return Manifest.model_validate_json((path / MANIFEST).read_text())


def verify(path: Path) -> list[str]:
    """Names of files whose hash or size differs from the manifest (empty = intact)."""
    manifest = read_manifest(path)
    bad = []
    for name, entry in manifest.files.items():
        f = path / name
        if not f.is_file() or f.stat().st_size != entry.bytes or sha256_file(f) != entry.sha256:
            bad.append(name)
    return bad


@functools.lru_cache(maxsize=16)
def _file_digest(path: Path, mtime_ns: int, size: int) -> str:
    return sha256_file(path)


def _digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    st = path.stat()
    return _file_digest(path, st.st_mtime_ns, st.st_size)


def tokenizer_identity(model_dir: Path, tokenizer: Any) -> dict[str, Any]:
    return {"name_or_path": str(getattr(tokenizer, "name_or_path", model_dir)), "vocab_size": len(tokenizer),
            "tokenizer_json_sha256": _digest(model_dir / "tokenizer.json")}


def model_identity(model_dir: Path, served_model_name: str) -> dict[str, Any]:
    return {"served_model_name": served_model_name, "path": str(model_dir),
            "config_sha256": _digest(model_dir / "config.json")}


def identity_mismatch(manifest: Manifest, model_dir: Path) -> str | None:
    """Why a version cannot be enforced on the model served from `model_dir` (its token ids and embeddings
    would mean other words), or None. Paths and names may differ between replicas; file contents may not."""
    checks = (("tokenizer", manifest.tokenizer.get("tokenizer_json_sha256"), _digest(model_dir / "tokenizer.json")),
              ("model config", manifest.model.get("config_sha256"), _digest(model_dir / "config.json")))
    for what, compiled, served in checks:
        if compiled != served:
            return (f"compiled for another {what} (sha256 {str(compiled)[:12]}, served {str(served)[:12]}); "
                    "recompile it: guard-service policies recompile")
    return None


def open_verified(path: Path, model_dir: Path | None = None) -> Manifest:
    """The manifest of an intact version folder, else ValueError saying what is wrong: files that differ from
    their sha256, a format this code does not read, or (given `model_dir`) another model's tokenizer."""
    manifest = read_manifest(path)
    if manifest.format_version != FORMAT_VERSION:
        raise ValueError(f"artifact format {manifest.format_version}, this server reads {FORMAT_VERSION}")
    bad = verify(path)
    if bad:
        raise ValueError(f"artifact files differ from the manifest: {', '.join(bad)}")
    if model_dir is not None and (why := identity_mismatch(manifest, model_dir)):
        raise ValueError(why)
    return manifest


def load_sequences(path: Path, whole_only: bool = False) -> list[list[int]]:
    tokens = np.load(path / "trie_tokens.npy", mmap_mode="r")
    offsets = np.load(path / "trie_offsets.npy")
    keep = np.load(path / "trie_whole.npy") if whole_only else np.ones(len(offsets) - 1, dtype=bool)
    return [tokens[offsets[i]:offsets[i + 1]].tolist() for i in range(len(offsets) - 1) if keep[i]]


def load_semantic(path: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(path / "semantic_ids.npy"), np.load(path / "semantic_weights.npy")
