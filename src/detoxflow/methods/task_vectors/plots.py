"""Toxicity vs perplexity across lambda: the single-model sweep against the merged models."""

from __future__ import annotations

import os

from ...io import atomic_path


def plot_lambda_sweep(result: dict, out_path: str | os.PathLike) -> None:
    """One curve per family (single baseline, merged per N), points labelled by lambda.

    Dotted segments join each merged model to its toxicity-matched baseline.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result["metric"]
    points = result["points"]
    base = result["base"]
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    families: dict[str, list[dict]] = {}
    for p in points:
        if p["family"] == "single":
            families.setdefault("single model (baseline)", []).append(p)
        elif p["family"] == "merge":
            families.setdefault(f"merged, N = {p['n_splits']}", []).append(p)
    markers = ["o", "s", "^", "D", "v", "P"]
    for i, (label, pts) in enumerate(sorted(families.items(), key=lambda kv: (not kv[0].startswith("single"), kv[0]))):
        pts = sorted(pts, key=lambda p: p["lambda"])
        xs = [p["perplexity"] for p in pts]
        ys = [p.get(metric) for p in pts]
        ax.plot(xs, ys, marker=markers[i % len(markers)], label=label)
        for p, x, y in zip(pts, xs, ys):
            ax.annotate(f"λ={p['lambda']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.scatter([base["perplexity"]], [base.get(metric)], marker="*", s=160, color="black", zorder=5,
               label="base model")
    for r in result.get("matching", []):
        if r.get("single_perplexity") is None:
            continue
        ax.plot([r["merged_perplexity"], r["single_perplexity"]],
                [r[f"merged_{metric}"], r[f"single_{metric}"]], ":", color="grey", linewidth=1)
    ppl_limit = base["perplexity"] + result["ppl_margin"]
    ax.axvline(ppl_limit, color="red", linestyle="--", linewidth=0.8,
               label=f"base perplexity + {result['ppl_margin']:g} (Ilharco)")
    all_ppl = [p["perplexity"] for p in points]
    if max(all_ppl) / max(min(all_ppl), 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("perplexity (lower is better)")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (lower is better)")
    ax.set_title("Task-vector negation: toxicity vs perplexity across lambda")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
