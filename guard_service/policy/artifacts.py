"""The one on-disk format of a compiled policy, and its one owner: the compiler writes through `ArtifactWriter`,
every reader (API process, engine worker, admin API, benches) opens through `PolicyArtifact`.

    policies/<policy_id>/v<version>/
        manifest.json        `Manifest`: format version, every file's sha256 and size, the tokenizer and model
                             config it was compiled for, strength, calibration, compile stats
        forbidden.json       `ForbiddenFile`: forbidden strings with their origin (operator-given or expanded),
                             every spelling variant, the knowledge-expansion items and scores
        trie_tokens.npy      int32, every forbidden token sequence concatenated
        trie_offsets.npy     int64, sequence i is trie_tokens[offsets[i]:offsets[i+1]]
        trie_whole.npy       bool, sequence i spells a whole name (banned on every request, "watch" mode) rather
                             than one word split off a longer name or a phrase of a fact (banned when steering)
        semantic_ids.npy     int64, vocabulary ids that get a semantic penalty (sparse)
        semantic_weights.npy float32, penalty in [0, 1] per id (scaled by strength at run time)
        anchor_ids.npy       int64, the first (word-carrying) token of each forbidden string
        classifier.faiss     faiss inner-product index over L2-normalised prompt embeddings
        classifier.json      `ClassifierFile`: the texts behind the index rows, thresholds, and what the lexical
                             detectors look for (names, facts, evidence)
        knowledge.json       `KnowledgeFile`: what the documents say about the target (policy/knowledge.py):
                             terms, fact sentences and roles, each with its origin, score and uses; absent from
                             versions compiled before it (read as empty)
        provenance/          only when documents are protected: a suffix array over their token ids
            tokens.npy       uint16/uint32 token ids of every document, each followed by a separator id
            sa.npy           int32/int64 suffix array of tokens.npy (libdivsufsort)
            docs.npy         int64 start offset of each document in tokens.npy
            docs.json        document names (upload index or server-side path)

Versions are immutable: a new request version is a new folder, written to a temp dir beside it and renamed into
place, so readers (other replicas, engine workers) never see half a policy and never need invalidation. The
store keeps every file by sha256 (`blobs`), so a replica that did not compile a version rebuilds it (`fetch`)
under its own root: no file system is shared. A
reader verifies before it trusts (`PolicyArtifact.open`): the format version, every file's sha256, and, given
the served model, that the tokenizer and model config are the ones it was compiled for.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from guard_service.protocol import PolicyKey

FORMAT_VERSION = 1
STAGING = ".staging-"
M = TypeVar("M", bound=BaseModel)


class Files:
    """Every file name of the format, here and nowhere else."""

    MANIFEST = "manifest.json"
    FORBIDDEN = "forbidden.json"
    TRIE_TOKENS = "trie_tokens.npy"
    TRIE_OFFSETS = "trie_offsets.npy"
    TRIE_WHOLE = "trie_whole.npy"
    SEMANTIC_IDS = "semantic_ids.npy"
    SEMANTIC_WEIGHTS = "semantic_weights.npy"
    ANCHOR_IDS = "anchor_ids.npy"
    CLASSIFIER_INDEX = "classifier.faiss"
    CLASSIFIER = "classifier.json"
    KNOWLEDGE = "knowledge.json"
    PROVENANCE = "provenance"
    PROVENANCE_TOKENS = "tokens.npy"
    PROVENANCE_SA = "sa.npy"
    PROVENANCE_DOC_STARTS = "docs.npy"
    PROVENANCE_DOC_NAMES = "docs.json"


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


class ForbiddenItem(BaseModel):
    text: str
    origin: str  # target | alias | fact | description | expanded | expanded-fact
    split: bool = False  # one word of a longer name: forbidden when steering, not everywhere


class SoundForm(BaseModel):
    """A whole name as it may be written in another script, by sound (policy/sound.py): what the compiler
    generated, shown in the request's detail; an operator removes it by `form` (PATCH `remove_expanded`)."""

    form: str  # "sound:<name>"
    name: str
    keys: list[list[str]]  # each word's sound keys (a text's word matches one of them)
    joined: list[str]  # the whole name's keys run together (CJK writes a name without spaces)
    origin: str = "sound-key"


class KnowledgeItem(BaseModel):
    """One mined item (policy/knowledge.py): an operator reviews it in the request's detail and removes it by
    `text` (PATCH `remove_expanded`)."""

    text: str
    kind: str  # term | work | name | place | others-work (a work the documents give to `owner`) | fact
    origin: str  # "<document>@<character offset>", or "model" for what the served model added
    score: float
    count: int = 1
    uses: list[str] = Field(default_factory=list)  # reverse-query, co-mention, described, output
    owner: str | None = None


class KnowledgeFile(BaseModel):
    items: list[KnowledgeItem] = Field(default_factory=list)
    roles: list[str] = Field(default_factory=list)  # what the target is (author, actor, ...): policy/knowledge.ROLES
    stats: dict[str, Any] = Field(default_factory=dict)

    def terms(self) -> list[KnowledgeItem]:
        return [i for i in self.items if i.kind != "fact"]

    def facts(self) -> list[str]:
        return [i.text for i in self.items if i.kind == "fact"]


class ForbiddenFile(BaseModel):
    items: list[ForbiddenItem]
    variants: list[str]
    expansion: dict[str, Any] = Field(default_factory=dict)
    crosslingual: list[SoundForm] = Field(default_factory=list)  # absent from versions compiled before it


class ClassifierFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    texts: list[str]
    threshold: float
    refuse_threshold: float
    confident_threshold: float  # a semantic score this high matches alone; between threshold and it, with evidence
    aliases: list[str]  # every name of the target (operator-given and expanded)
    facts: list[str] = Field(default_factory=list)
    evidence: list[str] = Field(default_factory=list)  # phrases that say a prompt is about this target
    weak_evidence: list[str] = Field(default_factory=list)  # place/genre words: count only beside a number


def version_dir(root: Path, policy_id: str, version: int) -> Path:
    return root / policy_id / f"v{version}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def read_manifest(path: Path) -> Manifest:
    return Manifest.model_validate_json((path / Files.MANIFEST).read_text())


def verify(path: Path) -> list[str]:
    """Names of files whose hash or size differs from the manifest (empty = intact)."""
    manifest = read_manifest(path)
    bad = []
    for name, entry in manifest.files.items():
        f = path / name
        if not f.is_file() or f.stat().st_size != entry.bytes or sha256_file(f) != entry.sha256:
            bad.append(name)
    return bad


class PolicyArtifact:
    """One verified, immutable policy version on disk, read through typed accessors (each file read once)."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path, self.manifest = path, manifest

    @classmethod
    def open(cls, path: Path, model_dir: Path | None = None) -> PolicyArtifact:
        """ValueError (saying what is wrong) unless the folder is intact: the format version this code reads,
        every file as the manifest says, and (given `model_dir`) the served model's tokenizer and config."""
        manifest = read_manifest(path)
        if manifest.format_version != FORMAT_VERSION:
            raise ValueError(f"artifact format {manifest.format_version}, this server reads {FORMAT_VERSION}")
        bad = verify(path)
        if bad:
            raise ValueError(f"artifact files differ from the manifest: {', '.join(bad)}")
        if model_dir is not None and (why := identity_mismatch(manifest, model_dir)):
            raise ValueError(why)
        return cls(path, manifest)

    @classmethod
    def open_key(cls, root: Path, key: PolicyKey, model_dir: Path | None = None) -> PolicyArtifact:
        return cls.open(version_dir(root, key.id, key.version), model_dir)

    @property
    def key(self) -> PolicyKey:
        return PolicyKey(self.manifest.policy_id, self.manifest.version)

    def _model(self, name: str, model: type[M]) -> M:
        return model.model_validate_json((self.path / name).read_text())

    @functools.cached_property
    def forbidden(self) -> ForbiddenFile:
        return self._model(Files.FORBIDDEN, ForbiddenFile)

    @functools.cached_property
    def classifier(self) -> ClassifierFile:
        return self._model(Files.CLASSIFIER, ClassifierFile)

    @functools.cached_property
    def knowledge(self) -> KnowledgeFile:
        return self._model(Files.KNOWLEDGE, KnowledgeFile) if (self.path / Files.KNOWLEDGE).is_file() \
            else KnowledgeFile()

    def classifier_index(self) -> Any:
        import faiss

        return faiss.read_index(str(self.path / Files.CLASSIFIER_INDEX))

    def sequences(self, whole_only: bool = False) -> list[list[int]]:
        tokens = np.load(self.path / Files.TRIE_TOKENS, mmap_mode="r")
        offsets = np.load(self.path / Files.TRIE_OFFSETS)
        keep = np.load(self.path / Files.TRIE_WHOLE) if whole_only else np.ones(len(offsets) - 1, dtype=bool)
        return [tokens[offsets[i]:offsets[i + 1]].tolist() for i in range(len(offsets) - 1) if keep[i]]

    def semantic(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, weights, anchor ids) of the sparse semantic penalty."""
        return (np.load(self.path / Files.SEMANTIC_IDS), np.load(self.path / Files.SEMANTIC_WEIGHTS),
                np.load(self.path / Files.ANCHOR_IDS))

    @property
    def provenance_path(self) -> Path | None:
        return self.path / Files.PROVENANCE if self.manifest.provenance else None


def blobs(path: Path) -> dict[str, bytes]:
    """A published version's files by sha256 (content-addressed), for a store that replicates them to replicas
    that did not compile it (no shared file system needed)."""
    manifest = read_manifest(path)
    return {entry.sha256: (path / name).read_bytes() for name, entry in manifest.files.items()}


def _staging_dir(final: Path, purpose: str) -> Path:
    """A temp dir beside `final`, named by the host and process that write it (`remove_stale_staging`)."""
    prefix = f"{STAGING}{_host()}-{os.getpid()}-{final.name}-{purpose}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))


def explain_write_error(exc: OSError, root: Path) -> OSError:
    """A full disk in an operator's words: numpy reports it as "<n> requested and <m> written", without errno."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT) or ("requested and" in str(exc) and "written" in str(exc))
    if not full:
        return exc
    free = shutil.disk_usage(root).free
    return OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} for the policy artifacts under {root} ({free} bytes "
                   f"free; the write said: {exc})")


def remove_stale_staging(root: Path) -> list[Path]:
    """At start: temp dirs a killed process of this host left behind (its compile or fetch never published).
    Another live process on this host (a second server on the same folder) keeps its own; dirs of other hosts
    (a shared volume) are theirs to clean. Nothing here was ever loaded: readers open published folders only."""
    removed = []
    for path in root.glob(f"*/{STAGING}*"):
        host, _, rest = path.name.removeprefix(STAGING).partition("-")
        pid = rest.partition("-")[0]
        if host != _host() or not pid.isdigit():
            continue
        if int(pid) != os.getpid() and _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _host() -> str:
    return socket.gethostname().replace("-", "_")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return True


def fetch(root: Path, policy_id: str, version: int, manifest: dict[str, Any],
          blob: Callable[[str], bytes | None]) -> Path:
    """Rebuild a version this replica did not compile under `root`, from its manifest (as the store keeps it)
    and its files by sha256 (`blob`), each verified before the folder is renamed into place."""
    final = version_dir(root, policy_id, version)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_dir(final, "fetch")
    try:
        parsed = Manifest.model_validate(manifest)
        for name, entry in parsed.files.items():
            data = blob(entry.sha256)
            if data is None or hashlib.sha256(data).hexdigest() != entry.sha256 or len(data) != entry.bytes:
                raise ValueError(f"the store has no intact copy of {name} ({entry.sha256[:12]})")
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (staging / Files.MANIFEST).write_text(parsed.model_dump_json(indent=1))
        staging.chmod(0o755)
        try:
            os.replace(staging, final)
        except OSError:  # another process fetched it meanwhile
            if not final.is_dir():
                raise
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class ArtifactWriter:
    """Collect files in a temp dir through typed writers, then `publish()` them atomically as one version."""

    def __init__(self, root: Path, policy_id: str, version: int):
        self.final = version_dir(root, policy_id, version)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.dir = _staging_dir(self.final, "compile")

    def _path(self, name: str) -> Path:
        p = self.dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def _array(self, name: str, value: np.ndarray) -> None:
        np.save(self._path(name), value, allow_pickle=False)

    def _model(self, name: str, value: BaseModel) -> None:
        self._path(name).write_text(json.dumps(value.model_dump(mode="json"), indent=1, ensure_ascii=False))

    def write_forbidden(self, value: ForbiddenFile) -> None:
        self._model(Files.FORBIDDEN, value)

    def write_knowledge(self, value: KnowledgeFile) -> None:
        self._model(Files.KNOWLEDGE, value)

    def write_trie(self, sequences: list[tuple[int, ...]], whole: list[bool]) -> None:
        lengths = np.asarray([len(s) for s in sequences], dtype=np.int64)
        self._array(Files.TRIE_TOKENS, np.asarray([t for s in sequences for t in s], dtype=np.int32))
        self._array(Files.TRIE_OFFSETS, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        self._array(Files.TRIE_WHOLE, np.asarray(whole, dtype=np.bool_))

    def write_semantic(self, ids: np.ndarray, weights: np.ndarray, anchors: list[int]) -> None:
        self._array(Files.SEMANTIC_IDS, ids)
        self._array(Files.SEMANTIC_WEIGHTS, weights)
        self._array(Files.ANCHOR_IDS, np.asarray(anchors, dtype=np.int64))

    def write_classifier(self, value: ClassifierFile, index: Any) -> None:
        import faiss

        faiss.write_index(index, str(self._path(Files.CLASSIFIER_INDEX)))
        self._model(Files.CLASSIFIER, value)

    def write_provenance(self, tokens: np.ndarray, sa: np.ndarray, doc_starts: list[int],
                         doc_names: list[str]) -> None:
        folder = Path(Files.PROVENANCE)
        self._array(str(folder / Files.PROVENANCE_TOKENS), tokens)
        self._array(str(folder / Files.PROVENANCE_SA), sa)
        self._array(str(folder / Files.PROVENANCE_DOC_STARTS), np.asarray(doc_starts, dtype=np.int64))
        self._path(str(folder / Files.PROVENANCE_DOC_NAMES)).write_text(json.dumps(doc_names))

    def publish(self, manifest: Manifest) -> Path:
        files = sorted(p for p in self.dir.rglob("*") if p.is_file())
        manifest.files = {str(p.relative_to(self.dir)): FileEntry(sha256=sha256_file(p), bytes=p.stat().st_size)
                          for p in files}
        (self.dir / Files.MANIFEST).write_text(manifest.model_dump_json(indent=1))
        self.dir.chmod(0o755)
        if self.final.exists():  # a crashed earlier compile of the same version never became active
            shutil.rmtree(self.final)
        os.replace(self.dir, self.final)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
