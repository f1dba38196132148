"""Shared benchmark helpers: the embedded SmolLM2 materialised once under benchmarks/out/."""

from __future__ import annotations

import os
import platform
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def smollm2_dir() -> Path:
    """The embedded SmolLM2 as a safetensors folder (materialised on first use)."""
    from detoxflow.models import materialise

    folder = OUT / "smollm2"
    if not (folder / "config.json").is_file():
        materialise("embedded:smollm2", folder)
    return folder


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {gpu}"
