"""Which accelerator this host has. Code never hard-codes a device; the engine decides, this only informs
defaults (dtype, memory fraction) that differ between CPU and CUDA builds of vLLM."""

from __future__ import annotations

import functools


@functools.cache
def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
