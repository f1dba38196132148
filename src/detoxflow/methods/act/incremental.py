"""Estimating the maps of every selected module, at once or incrementally (apple/ml-act's ``incr``).

*At once*: one forward pass over the sentences records every module; each map is fitted
on the model's own activations. *Incremental* (the reference's default): modules are
taken in execution order; module ``m`` is recorded with the maps of all earlier modules
already applied (strength 1, with their quantile clipping), so each map corrects the
distribution the intervened model actually produces. That costs one pass per module,
each stopped right after its module (on average about half a model's forward per
module): ``len(modules) / 2`` full passes over the sentences instead of one.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch

from ...activations import record_pooled
from ...errors import DetoxflowError
from ...io import atomic_path
from .estimators import TransportMap, estimate
from .hooks import transport_hooks

log = logging.getLogger(__name__)


def _fit(method, z, labels, settings) -> TransportMap:
    lab = torch.as_tensor(labels, dtype=torch.bool)
    quantiles = settings.get("quantiles") if method == "linear_act" else None
    return estimate(method, z[lab], z[~lab], quantiles=quantiles, std_eps=float(settings.get("std_eps", 1e-4)))


def estimate_maps(model, tokenizer, texts: Sequence[str], labels: Sequence[int],
                  points: "OrderedDict[str, torch.nn.Module]", method: str, settings: dict,
                  ) -> tuple["OrderedDict[str, TransportMap]", dict]:
    """{module: map} in execution order, and the passes / tokens it took."""
    rec = dict(pooling=settings["pooling"], batch_size=int(settings["batch_size"]),
               max_tokens=int(settings["max_tokens"]), pool_special_tokens=bool(settings["pool_special_tokens"]))
    maps: "OrderedDict[str, TransportMap]" = OrderedDict()
    passes = tokens = 0
    if not settings["incremental"]:
        acts, tokens = record_pooled(model, tokenizer, texts, points, desc=f"{method}: all modules", **rec)
        passes = 1
        for name, z in acts.items():
            maps[name] = _fit(method, z, labels, settings)
    else:
        for i, (name, mod) in enumerate(points.items()):
            with transport_hooks(model, maps, 1.0, clip=bool(settings.get("clip_while_estimating", True))):
                acts, n = record_pooled(model, tokenizer, texts, OrderedDict([(name, mod)]),
                                        desc=f"{method}: {i + 1}/{len(points)} {name}", **rec)
            maps[name] = _fit(method, acts[name], labels, settings)
            passes += 1
            tokens += n
    return maps, {"passes": passes, "tokens": tokens}


def save_maps(path: str | os.PathLike, maps: "OrderedDict[str, TransportMap]", meta: dict) -> Path:
    from safetensors.torch import save_file

    tensors = {}
    for name, m in maps.items():
        tensors[f"{name}::beta"] = m.beta.contiguous()
        tensors[f"{name}::alpha"] = m.alpha.contiguous()
        if m.lo is not None:
            tensors[f"{name}::lo"] = m.lo.contiguous()
            tensors[f"{name}::hi"] = m.hi.contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"detoxflow": json.dumps(dict(meta, modules=list(maps)))})
    return Path(path)


def load_maps(path: str | os.PathLike) -> tuple["OrderedDict[str, TransportMap]", dict]:
    from safetensors import safe_open

    if not Path(path).is_file():
        raise DetoxflowError(f"{path}: transport maps file not found")
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {})["detoxflow"])
        keys = set(fh.keys())
        maps = OrderedDict()
        for name in meta["modules"]:
            get = (lambda k: fh.get_tensor(f"{name}::{k}") if f"{name}::{k}" in keys else None)
            maps[name] = TransportMap(beta=get("beta"), alpha=get("alpha"), lo=get("lo"), hi=get("hi"))
    return maps, meta
