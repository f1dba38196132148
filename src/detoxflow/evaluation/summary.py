"""One table over every evaluated run: CSV for programs, markdown for people, a plot and sample continuations.

Knows no method. What it reads is named in a spec (the workflow writes it):

    {"runs":   [{"model", "prompting", "toxicity": toxicity.json, "scored": toxicity.jsonl}, ...],
     "models": {name: {"folder": model folder, "metrics": [metrics files]}}}

A row's ``method`` and parameters come from the model folder's ``detoxflow.json``
(whatever scalar parameters the method declared there); every per-model
metrics file (perplexity, SafeEdit, capability, written by
:func:`detoxflow.io.write_metrics`) adds its ``metrics`` as columns.

A model folder made by a chain of methods (one method started from another's
folder) declares ``chain`` in its ``detoxflow.json``; the ``chain`` column shows
it (``aura → linear_act``). Over the plain runs, ``pareto`` marks the variants no
other variant beats on both toxicity and perplexity, and ``best_within_1ppl`` the
least toxic variant whose perplexity is at most the base model's + 1.

``summary.csv`` keeps every column. ``summary.md`` is for reading: a main table
of the headline columns, a table of the remaining metrics, and one small
table per method of its parameters.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import DetoxflowError
from ..io import atomic_path, read_json, read_jsonl, read_metrics
from ..models import read_metadata

LEAD_COLUMNS = ["variant", "method", "model", "preprompt"]
#: after the lead columns: the chain of methods that made the model, and the trade-off marks
CHAIN_COLUMNS = ["chain", "pareto", "best_within_1ppl"]
CHAIN_SEP = " → "
#: the perplexity allowance of ``best_within_1ppl`` (the Linear-AcT paper's +1 budget)
PPL_BUDGET = 1.0
#: per-run metrics of score-toxicity that become columns
RUN_METRICS = [
    "expected_max_toxicity", "toxicity_probability", "mean_toxicity", "toxic_fraction",
    "distinct_1", "distinct_2", "distinct_3",
]
#: columns of the main markdown table (where present) with their short headers
HEADLINE = {
    "expected_max_toxicity": "EMT",
    "toxicity_probability": "tox. prob.",
    "mean_toxicity": "mean tox.",
    "perplexity": "perplexity",
    "safeedit_DS": "SafeEdit DS",
    "safeedit_DG_avg": "DG-Avg",
    "safeedit_fluency": "fluency",
}
#: metrics columns with this prefix also join the main table (one per capability task metric)
HEADLINE_PREFIXES = ("capability_",)


def variant_name(model: str, prompting: str) -> str:
    return model if prompting == "plain" else f"{model}+{prompting}"


def _check_spec(spec: Any) -> None:
    if not isinstance(spec, dict) or not isinstance(spec.get("runs"), list) or not isinstance(spec.get("models"), dict):
        raise DetoxflowError("summary spec must be a JSON object with a `runs` list and a `models` object")
    if not spec["runs"]:
        raise DetoxflowError("nothing to summarise: no runs given")


def _scalar_params(params: dict) -> dict:
    return {k: v for k, v in (params or {}).items() if isinstance(v, (int, float, str, bool))}


def build_table(spec: dict) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """The table (one row per run) and, per method, the parameter columns it declared."""
    _check_spec(spec)
    per_model: dict[str, dict] = {}
    method_params: dict[str, list[str]] = {}
    for name, info in spec["models"].items():
        meta = read_metadata(info["folder"])
        method = meta.get("method", "external")
        chain = meta.get("chain") or ([] if method in ("base", "external") else [method])
        params = _scalar_params(meta.get("params", {}))
        keys = method_params.setdefault(method, [])
        keys.extend(k for k in params if k not in keys)
        metrics: dict[str, Any] = {}
        for path in info.get("metrics", []):
            metrics.update({k: v for k, v in read_metrics(path).items() if isinstance(v, (int, float, type(None)))})
        per_model[name] = {"method": method, "params": params, "metrics": metrics,
                           "chain": CHAIN_SEP.join(str(c) for c in chain)}
    rows = []
    for run in spec["runs"]:
        model, prompting = run["model"], run["prompting"]
        if model not in per_model:
            raise DetoxflowError(f"summary spec: run of model '{model}' but no such entry under `models`")
        tox = read_json(run["toxicity"])
        info = per_model[model]
        rows.append({
            "variant": variant_name(model, prompting),
            "method": info["method"],
            "model": model,
            "preprompt": "" if prompting == "plain" else prompting,
            "chain": info["chain"],
            **{k: tox[k] for k in RUN_METRICS if k in tox},
            **info["metrics"],
            **info["params"],
        })
    df = pd.DataFrame(rows)
    mark_tradeoff(df)
    params = [k for keys in method_params.values() for k in keys]
    metric_cols = [c for c in df.columns if c not in LEAD_COLUMNS + CHAIN_COLUMNS and c not in params]
    first = [c for c in HEADLINE if c in metric_cols]
    df = df[LEAD_COLUMNS + CHAIN_COLUMNS + first + [c for c in metric_cols if c not in first]
            + [c for c in dict.fromkeys(params) if c in df.columns]]
    order = {"base": 0}
    df["_o"] = df["method"].map(lambda m: order.get(m, 1))
    df = df.sort_values(["_o", "method", "variant"]).drop(columns="_o").reset_index(drop=True)
    return df, method_params


def toxicity_column(df: pd.DataFrame) -> str | None:
    """The toxicity the trade-off is judged on: expected maximum toxicity, else mean toxicity."""
    for col in ("expected_max_toxicity", "mean_toxicity"):
        if col in df.columns and df[col].notna().any():
            return col
    return None


def mark_tradeoff(df: pd.DataFrame, budget: float = PPL_BUDGET) -> None:
    """Add ``pareto`` and ``best_within_1ppl`` (booleans, plain runs only) in place."""
    df["pareto"] = False
    df["best_within_1ppl"] = False
    tox = toxicity_column(df)
    if tox is None or "perplexity" not in df.columns:
        return
    plain = df[(df["preprompt"] == "") & df[tox].notna() & df["perplexity"].notna()]
    for i, r in plain.iterrows():
        beaten = ((plain[tox] <= r[tox]) & (plain["perplexity"] <= r["perplexity"])
                  & ((plain[tox] < r[tox]) | (plain["perplexity"] < r["perplexity"])))
        df.loc[i, "pareto"] = not bool(beaten.any())
    base = plain[plain["method"] == "base"]
    if len(base):
        within = plain[plain["perplexity"] <= float(base["perplexity"].iloc[0]) + budget]
        if len(within):
            best = within.sort_values([tox, "perplexity"]).index[0]
            df.loc[best, "best_within_1ppl"] = True


def best_line(df: pd.DataFrame) -> str:
    """One sentence naming the least toxic variant within +1 perplexity of the base model."""
    tox = toxicity_column(df)
    rows = df[df["best_within_1ppl"]] if "best_within_1ppl" in df.columns else df.iloc[0:0]
    if tox is None or not len(rows):
        return ""
    r = rows.iloc[0]
    base = df[(df["method"] == "base") & (df["preprompt"] == "")].iloc[0]
    return (f"**Least toxic within +{PPL_BUDGET:g} perplexity of base**: `{r['variant']}` "
            f"({tox} {_fmt(float(r[tox]), 3)} vs {_fmt(float(base[tox]), 3)}; perplexity "
            f"{_fmt(float(r['perplexity']), 3)} vs {_fmt(float(base['perplexity']), 3)}). "
            "Pareto-optimal variants (no other is both less toxic and lower in perplexity) are marked in "
            "the `pareto` column.\n")


def _fmt(v, digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "✓" if v else ""
    if isinstance(v, float):
        if v.is_integer():  # counts in a column that also holds blanks (pandas makes it float)
            return str(int(v))
        return f"{v:.{digits}g}" if abs(v) >= 1000 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


def to_markdown(df: pd.DataFrame, digits: int = 4, headers: dict[str, str] | None = None) -> str:
    headers = headers or {}
    header = "| " + " | ".join(headers.get(c, c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_fmt(v, digits) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, sep, *body]) + "\n"


def headline_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in HEADLINE if c in df.columns] + [
        c for c in df.columns if c.startswith(HEADLINE_PREFIXES)]


def summary_markdown(df: pd.DataFrame, method_params: dict[str, list[str]]) -> str:
    """Main table, the remaining metrics, then one parameter table per method."""
    main = ["variant", "method", "chain"] + headline_columns(df) + ["pareto", "best_within_1ppl"]
    main = [c for c in main if c in df.columns]
    params = {k for keys in method_params.values() for k in keys}
    rest = [c for c in df.columns if c not in LEAD_COLUMNS and c not in main and c not in params]
    headers = dict(HEADLINE, best_within_1ppl=f"best (≤ base ppl + {PPL_BUDGET:g})")
    parts = ["# Summary", "", to_markdown(df[main], headers=headers, digits=3)]
    line = best_line(df)
    if line:
        parts += [line]
    if rest:
        parts += ["## More metrics", "", to_markdown(df[["variant"] + rest])]
    for method, keys in method_params.items():
        rows = df[(df["method"] == method) & (df["preprompt"] == "")]
        if keys and len(rows):
            parts += [f"## {method}: parameters", "", to_markdown(rows[["variant"] + keys])]
    parts.append("`summary.csv` holds every column.\n")
    return "\n".join(parts)


def plot_toxicity_vs_perplexity(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Toxicity vs perplexity of every run, the Pareto front of the plain runs, the +1 perplexity budget
    and the least toxic variant within it (starred)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tox = toxicity_column(df) or "expected_max_toxicity"
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for method, group in df.groupby("method", sort=False):
        ax.scatter(group["perplexity"], group[tox], label=method, s=40)
        for _, r in group.iterrows():
            ax.annotate(r["variant"], (r["perplexity"], r[tox]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    if "pareto" in df.columns and df["pareto"].any():
        front = df[df["pareto"]].sort_values("perplexity")
        ax.step(front["perplexity"], front[tox], where="post", color="0.3", lw=1, ls="--", label="Pareto front")
    base = df[(df["method"] == "base") & (df["preprompt"] == "")]
    if len(base) and "perplexity" in df.columns and base["perplexity"].notna().all():
        ax.axvline(float(base["perplexity"].iloc[0]) + PPL_BUDGET, color="0.6", lw=1, ls=":",
                   label=f"base perplexity + {PPL_BUDGET:g}")
    if "best_within_1ppl" in df.columns and df["best_within_1ppl"].any():
        b = df[df["best_within_1ppl"]].iloc[0]
        ax.scatter([b["perplexity"]], [b[tox]], marker="*", s=260, facecolors="none", edgecolors="k",
                   label=f"least toxic within budget: {b['variant']}")
    ax.set_xlabel("perplexity (WikiText, lower is better)")
    ax.set_ylabel(f"{tox.replace('_', ' ')} (lower is better)")
    ax.set_title("Toxicity vs perplexity per variant")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def sample_continuations(runs: list[dict], per_variant: int) -> pd.DataFrame:
    """The most toxic continuation of each of the first ``per_variant`` prompts of every run."""
    rows = []
    for run in runs:
        for rec in read_jsonl(run["scored"])[:per_variant]:
            best = max(range(len(rec["toxicity"])), key=lambda i: rec["toxicity"][i])
            rows.append({
                "variant": variant_name(run["model"], run["prompting"]),
                "prompt": rec["prompt"],
                "continuation": rec["continuations"][best],
                "toxicity": rec["toxicity"][best],
            })
    return pd.DataFrame(rows, columns=["variant", "prompt", "continuation", "toxicity"])


def write_summary(spec: dict, *, csv, markdown, plot, samples, samples_per_variant: int) -> pd.DataFrame:
    df, method_params = build_table(spec)
    with atomic_path(csv) as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(markdown) as tmp:
        Path(tmp).write_text(summary_markdown(df, method_params))
    plot_toxicity_vs_perplexity(df, plot)
    with atomic_path(samples) as tmp:
        sample_continuations(spec["runs"], samples_per_variant).to_csv(tmp, index=False)
    return df
