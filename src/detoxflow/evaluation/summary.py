"""One table over every evaluated run, as CSV and markdown, plus a plot and sample continuations.

Knows no method: a run's ``method`` and parameters come from the model
folder's ``detoxflow.json`` (carried in perplexity.json's ``metadata``), and
any extra per-model metrics (e.g. SafeEdit) are merged by model name.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..errors import DetoxflowError
from ..io import atomic_path, read_json, read_jsonl

METRIC_COLUMNS = [
    "expected_max_toxicity", "toxicity_probability", "mean_toxicity", "toxic_fraction",
    "perplexity", "distinct_1", "distinct_2", "distinct_3",
]
LEAD_COLUMNS = ["variant", "method", "model", "preprompt"]
ALWAYS_PARAMS = ["n_splits", "lambda"]


def variant_name(model: str, prompting: str) -> str:
    return model if prompting == "plain" else f"{model}+{prompting}"


def build_table(toxicity_files: Sequence[str], perplexity_files: Sequence[str], extra_files: Sequence[str] = ()) -> pd.DataFrame:
    ppl = {}
    for f in perplexity_files:
        data = read_json(f)
        ppl[data["model"]] = data
    extras: dict[str, dict] = {}
    for f in extra_files:
        data = read_json(f)
        model = data.get("model") or Path(f).parent.name
        extras.setdefault(model, {}).update(
            {k: v for k, v in data.items() if k != "model" and isinstance(v, (int, float, type(None)))}
        )
    rows = []
    for f in toxicity_files:
        tox = read_json(f)
        model, prompting = tox["model"], tox["prompting"]
        if model not in ppl:
            raise DetoxflowError(f"{f}: no perplexity result for model '{model}' among the inputs")
        meta = ppl[model].get("metadata", {})
        row = {
            "variant": variant_name(model, prompting),
            "method": meta.get("method", "external"),
            "model": model,
            "preprompt": "" if prompting == "plain" else prompting,
            **{k: tox.get(k) for k in METRIC_COLUMNS if k in tox},
            "perplexity": ppl[model]["perplexity"],
        }
        params = meta.get("params", {})
        for key in ALWAYS_PARAMS:
            row[key] = params.get(key)
        for key, value in params.items():
            if key not in row and isinstance(value, (int, float, str, bool)) and key != "source":
                row[key] = value
        row.update(extras.get(model, {}))
        rows.append(row)
    if not rows:
        raise DetoxflowError("nothing to summarise: no toxicity results given")
    df = pd.DataFrame(rows)
    first = LEAD_COLUMNS + METRIC_COLUMNS + ALWAYS_PARAMS
    df = df[[c for c in first if c in df.columns] + [c for c in df.columns if c not in first]]
    order = {"base": 0}
    df["_o"] = df["method"].map(lambda m: order.get(m, 1))
    return df.sort_values(["_o", "method", "variant"]).drop(columns="_o").reset_index(drop=True)


def to_markdown(df: pd.DataFrame, digits: int = 4) -> str:
    def fmt(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            if v.is_integer():  # counts in a column that also holds blanks (pandas makes it float)
                return str(int(v))
            return f"{v:.{digits}g}" if abs(v) >= 1000 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
        return str(v)

    header = "| " + " | ".join(df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, sep, *body]) + "\n"


def plot_toxicity_vs_perplexity(df: pd.DataFrame, path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for method, group in df.groupby("method", sort=False):
        ax.scatter(group["perplexity"], group["expected_max_toxicity"], label=method, s=40)
        for _, r in group.iterrows():
            ax.annotate(r["variant"], (r["perplexity"], r["expected_max_toxicity"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("perplexity (WikiText, lower is better)")
    ax.set_ylabel("expected maximum toxicity (lower is better)")
    ax.set_title("Toxicity vs perplexity per variant")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def sample_continuations(scored_files: Sequence[str], per_variant: int) -> pd.DataFrame:
    rows = []
    for f in scored_files:
        records = read_jsonl(f)
        parts = Path(f).parts
        model, prompting = parts[-3], parts[-2]
        for rec in records[:per_variant]:
            best = max(range(len(rec["toxicity"])), key=lambda i: rec["toxicity"][i])
            rows.append({
                "variant": variant_name(model, prompting),
                "prompt": rec["prompt"],
                "continuation": rec["continuations"][best],
                "toxicity": rec["toxicity"][best],
            })
    return pd.DataFrame(rows, columns=["variant", "prompt", "continuation", "toxicity"])


def write_summary(toxicity_files, perplexity_files, extra_files, scored_files, *, csv, markdown, plot, samples,
                  samples_per_variant: int = 3) -> pd.DataFrame:
    df = build_table(toxicity_files, perplexity_files, extra_files)
    with atomic_path(csv) as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(markdown) as tmp:
        tmp.write_text(to_markdown(df))
    plot_toxicity_vs_perplexity(df, plot)
    with atomic_path(samples) as tmp:
        sample_continuations(scored_files, samples_per_variant).to_csv(tmp, index=False)
    return df
