"""Per-layer statistics and plots of expertise (AUROC), AurA's alphas and dampened units."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ...io import atomic_path, write_json
from .interventions import compute_alphas
from .modules import layer_index, module_kind


def _variant_alphas(aurocs, variants: Sequence[dict]) -> "OrderedDict[str, OrderedDict[str, torch.Tensor]]":
    return OrderedDict(
        (
            v["name"],
            compute_alphas(
                aurocs, v["method"], k=v.get("k"), damp_alpha=v.get("alpha", 0.5), strength=v.get("strength", 1.0)
            ),
        )
        for v in variants
    )


def layer_stats(aurocs: Mapping[str, torch.Tensor], variants: Sequence[dict]) -> list[dict]:
    """One row per recorded module: layer, kind, AUROC summary, alpha summary, dampened counts per variant."""
    per_variant = _variant_alphas(aurocs, variants)
    rows = []
    for name, a in aurocs.items():
        a = a.to(torch.float32)
        q = torch.quantile(a, torch.tensor([0.5, 0.9, 0.99]))
        layer = layer_index(name)
        row = {
            "module": name,
            "layer": -1 if layer is None else layer,
            "kind": module_kind(name),
            "n_units": a.numel(),
            "auroc_mean": float(a.mean()),
            "auroc_median": float(q[0]),
            "auroc_q90": float(q[1]),
            "auroc_q99": float(q[2]),
            "auroc_max": float(a.max()),
            "n_auroc_gt_0.5": int((a > 0.5).sum()),
        }
        for vname, alphas in per_variant.items():
            al = alphas[name]
            row[f"{vname}_alpha_mean"] = float(al.mean())
            row[f"{vname}_alpha_min"] = float(al.min())
            row[f"{vname}_n_dampened"] = int((al < 1.0).sum())
        rows.append(row)
    return rows


def expertise_summary(aurocs: Mapping[str, torch.Tensor], variants: Sequence[dict], top: int = 20) -> dict:
    names = list(aurocs)
    flat = torch.cat([aurocs[n].reshape(-1).to(torch.float32) for n in names])
    sizes = [aurocs[n].numel() for n in names]
    offsets = torch.tensor([0] + sizes).cumsum(0)
    best = torch.topk(flat, min(top, flat.numel())).indices.tolist()
    top_units = []
    for i in best:
        m = int(torch.searchsorted(offsets, torch.tensor(i), right=True)) - 1
        top_units.append({"module": names[m], "unit": i - int(offsets[m]), "auroc": float(flat[i])})
    per_variant = _variant_alphas(aurocs, variants)
    return {
        "n_units": int(flat.numel()),
        "n_modules": len(names),
        "n_auroc_gt_0.5": int((flat > 0.5).sum()),
        "auroc_max": float(flat.max()),
        "auroc_min": float(flat.min()),
        "auroc_quantiles": {str(q): float(torch.quantile(flat, q)) for q in (0.5, 0.9, 0.99, 0.999)},
        "variants": {
            name: {
                "n_dampened": int(sum(int((a < 1).sum()) for a in al.values())),
                "alpha_mean": float(torch.cat([a.reshape(-1) for a in al.values()]).mean()),
            }
            for name, al in per_variant.items()
        },
        "top_units": top_units,
    }


def _by_layer(
    aurocs: Mapping[str, torch.Tensor], values: Mapping[str, torch.Tensor]
) -> "OrderedDict[int, torch.Tensor]":
    groups: "OrderedDict[int, list]" = OrderedDict()
    for name in aurocs:
        layer = layer_index(name)
        groups.setdefault(-1 if layer is None else layer, []).append(values[name].reshape(-1).to(torch.float32))
    return OrderedDict((k, torch.cat(v)) for k, v in sorted(groups.items()))


def plot_auroc_alpha(path: str | os.PathLike, aurocs: Mapping[str, torch.Tensor], variants: Sequence[dict]) -> Path:
    """Two panels: AUROC per layer (box plot, whiskers at 1/99 %) and AurA alpha per layer.

    The alpha panel shows the mean, the 1 % quantile and the minimum per layer.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_layer = _by_layer(aurocs, aurocs)
    layers = list(per_layer)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6.0, 0.3 * len(layers) + 3), 7), sharex=True)
    ax1.boxplot([per_layer[l].numpy() for l in layers], positions=range(len(layers)), whis=(1, 99),
                showfliers=False)
    ax1.plot(range(len(layers)), [float(per_layer[l].max()) for l in layers], "r.", label="max")
    ax1.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax1.set_ylabel("AUROC (toxic vs non-toxic)")
    ax1.set_title("Expertise of units per layer")
    ax1.legend(loc="upper left")
    aura_variants = [v for v in variants if v["method"] == "aura"] or [{"name": "aura", "method": "aura"}]
    for v in aura_variants:
        alphas = _variant_alphas(aurocs, [v])[v["name"]]
        al = _by_layer(aurocs, alphas)
        xs = range(len(layers))
        ax2.plot(xs, [float(al[l].mean()) for l in layers], marker="o", label=f"{v['name']}: mean alpha")
        ax2.plot(xs, [float(torch.quantile(al[l], 0.01)) for l in layers], ls="--", label=f"{v['name']}: 1% quantile")
        ax2.plot(xs, [float(al[l].min()) for l in layers], ls=":", label=f"{v['name']}: min")
    ax2.set_ylabel("alpha (output multiplier)")
    ax2.set_xlabel("layer")
    ax2.set_xticks(range(len(layers)))
    ax2.set_xticklabels([str(l) if l >= 0 else "other" for l in layers], rotation=90, fontsize=7)
    ax2.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


def plot_dampened(path: str | os.PathLike, aurocs: Mapping[str, torch.Tensor], variants: Sequence[dict]) -> Path:
    """Number of dampened units (alpha < 1) per layer, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_variant = _variant_alphas(aurocs, variants)
    fig, ax = plt.subplots(figsize=(8, 4))
    layers = None
    styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "x")]
    for i, (name, alphas) in enumerate(per_variant.items()):
        counts = OrderedDict((l, int((a < 1).sum())) for l, a in _by_layer(aurocs, alphas).items())
        layers = list(counts)
        total = sum(counts.values())
        ls, marker = styles[i % len(styles)]
        # Det0 and Damp with the same k dampen the same units: distinct styles keep both lines visible.
        ax.plot(range(len(layers)), list(counts.values()), ls=ls, marker=marker, markersize=4, fillstyle="none",
                label=f"{name} ({total} units)")
    if layers is not None:
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([str(l) if l >= 0 else "other" for l in layers], rotation=90, fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("dampened units (alpha < 1)")
    ax.set_title("Dampened units per layer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


def write_stats(csv_path, json_path, aurocs, variants) -> None:
    import pandas as pd

    rows = layer_stats(aurocs, variants)
    with atomic_path(csv_path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.6g")
    write_json(json_path, expertise_summary(aurocs, variants))
