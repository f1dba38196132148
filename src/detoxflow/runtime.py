"""Device, dtype and seeding: one place that turns config strings into torch objects."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from .errors import DetoxflowError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu. ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DetoxflowError(f"device '{name}' requested but no CUDA GPU is visible; use device: auto or cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise DetoxflowError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N")
    return torch.device(name)


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes in bfloat16 natively (x86 flags ``amx_bf16`` or ``avx512_bf16``)."""
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve_dtype(name: str = "float32", device: torch.device | None = None) -> torch.dtype:
    """``auto`` -> bfloat16 on a GPU that supports it or on a CPU with native bf16 (``amx_bf16`` /
    ``avx512_bf16``), else float32. Without a device (e.g. when a model folder is written) ``auto`` is float32."""
    if name == "auto":
        if device is not None and device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device is not None and device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    try:
        return _DTYPES[name]
    except KeyError:
        raise DetoxflowError(f"unknown dtype '{name}'; use one of auto, float32, bfloat16, float16") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def hf_token() -> str | None:
    """Hugging Face token for gated hub repos, from the environment; never logged."""
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")


def input_device(model) -> torch.device:
    """Where a model's inputs go: the device the input embeddings run on.

    The same as ``next(model.parameters()).device`` for a model on one device.
    For a model spread with a ``device_map`` it is the embeddings' device, where
    Accelerate's hooks expect the token ids; where the embeddings are offloaded
    (to CPU or disk, their weights on the ``meta`` device until used) it is the
    device their hook runs them on.
    """
    embeddings = model.get_input_embeddings()
    hook = getattr(embeddings, "_hf_hook", None)
    for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
        execution = getattr(h, "execution_device", None)
        if isinstance(execution, int):  # accelerate's GPU index
            return torch.device("cuda", execution)
        if execution is not None:
            return torch.device(execution)
    return embeddings.weight.device
