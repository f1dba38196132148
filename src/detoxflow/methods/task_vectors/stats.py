"""Size and direction of task vectors: norms, and cosines between families.

A family is a list of fine-tuned folders whose task vectors are averaged (the
merged vector of N splits; N = 1 for the single-model baseline). Reported per
family: the norm of the mean vector and the norm of each member's vector; per
pair of families: the cosine of their mean vectors. Answers questions such as
"is the merged vector only a shorter copy of the single one?" Streams tensor by
tensor (row chunks) like the merge, over the tensors the merge combines.
"""

from __future__ import annotations

import math
import os
from itertools import combinations
from pathlib import Path

import torch

from ...errors import DetoxflowError
from .merge import FLOAT_DTYPES, _read_tensor, _tensor_info, check_compatible, row_chunks, weight_map


def task_vector_stats(base_dir: str | os.PathLike, families: dict[str, list[str | os.PathLike]]) -> dict:
    if not families or any(not members for members in families.values()):
        raise DetoxflowError("task-vector stats need at least one family with at least one fine-tuned folder")
    base = Path(base_dir)
    folders = {name: [Path(m) for m in members] for name, members in families.items()}
    flat = [f for members in folders.values() for f in members]
    for f in flat:
        if not f.is_dir():
            raise DetoxflowError(f"fine-tuned model folder '{f}' does not exist")
    base_map = weight_map(base)
    maps = {f: weight_map(f) for f in flat}
    check_compatible(base, flat, [maps[f] for f in flat], base_map)

    names = list(folders)
    mean_sq = dict.fromkeys(names, 0.0)
    member_sq = {name: [0.0] * len(folders[name]) for name in names}
    dots = dict.fromkeys(combinations(names, 2), 0.0)
    tensors = 0
    for key, fname in base_map.items():
        dtype, shape = _tensor_info(base, fname, key)
        if dtype not in FLOAT_DTYPES or any(key not in maps[f] for f in flat):
            continue
        tensors += 1
        for rows in row_chunks(shape):
            pre = _read_tensor(base, fname, key, rows).to(torch.float64)
            means = {}
            for name in names:
                acc = torch.zeros_like(pre)
                for i, f in enumerate(folders[name]):
                    delta = _read_tensor(f, maps[f][key], key, rows).to(torch.float64) - pre
                    member_sq[name][i] += float(delta.square().sum())
                    acc += delta
                means[name] = acc / len(folders[name])
                mean_sq[name] += float(means[name].square().sum())
            for a, b in dots:
                dots[(a, b)] += float((means[a] * means[b]).sum())
    if not tensors:
        raise DetoxflowError(f"no floating-point tensor is shared by the base '{base}' and every fine-tuned model")

    def cosine(a, b):
        denom = math.sqrt(mean_sq[a] * mean_sq[b])
        return dots[(a, b)] / denom if denom else float("nan")

    return {
        "tensors": tensors,
        "families": {name: {"members": len(folders[name]), "mean_norm": math.sqrt(mean_sq[name]),
                            "member_norms": [math.sqrt(x) for x in member_sq[name]]} for name in names},
        "cosines": [{"a": a, "b": b, "cosine": cosine(a, b)} for a, b in dots],
    }


def stats_markdown(stats: dict) -> str:
    lines = ["# Task vectors: size and direction", "",
             "| family | members | norm of the mean vector | member norms (mean) |", "|---|---|---|---|"]
    for name, fam in stats["families"].items():
        avg = sum(fam["member_norms"]) / len(fam["member_norms"])
        lines.append(f"| {name} | {fam['members']} | {fam['mean_norm']:.4g} | {avg:.4g} |")
    if stats["cosines"]:
        lines += ["", "| family | family | cosine of the mean vectors |", "|---|---|---|"]
        lines += [f"| {c['a']} | {c['b']} | {c['cosine']:.4f} |" for c in stats["cosines"]]
    return "\n".join(lines) + "\n"
