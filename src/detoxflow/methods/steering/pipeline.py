"""The steering stage as steps the CLI runs: estimate directions on a start model -> folded folders."""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from pathlib import Path

import torch

from ...activations import record_pooled, sample_balanced
from ...errors import DetoxflowError
from ...folding import add_to_input, add_to_output
from ...io import atomic_path, read_jsonl
from ...models import load_model, load_tokenizer, model_chain, read_metadata, save_model_folder
from ...runtime import seed_everything
from .actadd import layout, n_layers, steering_vector
from .iti import head_directions, head_shifts, select_heads

log = logging.getLogger(__name__)


def _n_heads(model) -> int:
    cfg = model.config
    return int(getattr(cfg, "num_attention_heads", None) or cfg.n_head)


def _save(path, tensors: dict, meta: dict) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"detoxflow": json.dumps(meta)})


def _load(path) -> tuple[dict, dict]:
    from safetensors import safe_open

    if not Path(path).is_file():
        raise DetoxflowError(f"{path}: steering directions file not found")
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, json.loads(fh.metadata()["detoxflow"])


def run_estimate(model_dir, toxic_path, nontoxic_path, method: str, settings: dict, out, *, dtype="float32",
                 device="auto", trust_remote_code=False, names=("toxic", "nontoxic"), **placement) -> dict:
    cfg = settings
    seed_everything(int(cfg["seed"]))
    model = load_model(model_dir, dtype=dtype, device=device, trust_remote_code=trust_remote_code, **placement)
    tokenizer = load_tokenizer(model_dir, padding_side="right")
    t0 = time.perf_counter()
    if method == "actadd":
        block = cfg["actadd"]
        vec = steering_vector(model, tokenizer, block["positive"], block["negative"], int(block["layer"]))
        meta = {"method": method, "layer": int(block["layer"]), "positive": block["positive"],
                "negative": block["negative"], "passes": 1}
        tensors = {"vector": vec}
    elif method == "iti_c":
        texts, labels = sample_balanced(read_jsonl(toxic_path), read_jsonl(nontoxic_path),
                                        int(cfg["sentences_per_class"]), int(cfg["seed"]), section="steering",
                                        names=names)
        o_proj = layout(model)[2]
        mods = OrderedDict((o_proj.format(i=i), model.get_submodule(o_proj.format(i=i)))
                           for i in range(n_layers(model)))
        acts, n_tokens = record_pooled(model, tokenizer, texts, mods, pooling="mean", capture="input",
                                       batch_size=int(cfg["batch_size"]), max_tokens=int(cfg["max_tokens"]),
                                       pool_special_tokens=bool(cfg["pool_special_tokens"]), desc="iti_c")
        lab = torch.tensor(labels)
        tensors = {}
        for i, (name, z) in enumerate(acts.items()):
            d = head_directions(z, lab, _n_heads(model), int(cfg["seed"]) + 1000 * i)
            for key, val in d.items():
                tensors[f"{name}::{key}"] = val
        meta = {"method": method, "modules": list(acts), "n_heads": _n_heads(model), "n_sentences": len(texts),
                "n_tokens": n_tokens, "passes": 1}
    else:
        raise DetoxflowError(f"unknown steering method '{method}' (use iti_c or actadd)")
    meta.update(model=str(model_dir), seconds=round(time.perf_counter() - t0, 3))
    _save(out, tensors, meta)
    log.info("%s: estimated in %.1f s -> %s", method, meta["seconds"], out)
    return meta


@torch.no_grad()
def fold_steering(model, tensors: dict, meta: dict, strength: float, settings: dict) -> dict:
    """Fold the method's constants into ``model``; returns the parameters for detoxflow.json."""
    if meta["method"] == "actadd":
        add_to_output(model, layout(model)[1].format(i=int(meta["layer"])), float(strength) * tensors["vector"])
        return {"strength": float(strength), "layer": int(meta["layer"]), "contrast": f"{meta['positive']} - "
                f"{meta['negative']}"}
    per_layer = OrderedDict((name, {k: tensors[f"{name}::{k}"] for k in ("direction", "sigma", "accuracy",
                                                                       "separation") if f"{name}::{k}" in tensors})
                            for name in meta["modules"])
    top_k = int(settings["iti_c"]["top_k"])
    heads = select_heads(per_layer, top_k)
    for name, vec in head_shifts(per_layer, heads, strength).items():
        add_to_input(model, name, vec)
    accs = [float(per_layer[n]["accuracy"][h]) for n, h in heads]
    return {"strength": float(strength), "top_k": len(heads), "min_probe_accuracy": round(min(accs), 4),
            "sentences_per_class": int(meta["n_sentences"]) // 2}


def run_fold(model_dir, directions, spec: dict, settings: dict, out, *, dtype="auto", trust_remote_code=False):
    tensors, meta = _load(directions)
    load_dtype = dtype if dtype != "auto" else read_metadata(model_dir).get("dtype", "float32")
    model = load_model(model_dir, dtype=load_dtype, device="cpu", trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(model_dir)
    params = fold_steering(model, tensors, meta, spec["strength"], settings)
    return save_model_folder(model, tokenizer, out, method=spec["method"], params=params,
                             extra={"chain": model_chain(model_dir) + [spec["method"]], "start": spec["start"]})
