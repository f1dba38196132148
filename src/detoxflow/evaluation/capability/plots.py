"""Capability against toxicity: one panel per capability column of ``summary.csv``."""

from __future__ import annotations

import math
import os

import pandas as pd

from ...errors import DetoxflowError
from ...io import atomic_path
from .harness import PREFIX

TOXICITY = "expected_max_toxicity"


def capability_columns(df: pd.DataFrame) -> list[str]:
    """The capability columns with at least one value."""
    return [c for c in df.columns if c.startswith(PREFIX) and df[c].notna().any()]


def plot_capability_vs_toxicity(df: pd.DataFrame, path: str | os.PathLike, *, source: str = "summary") -> None:
    """Each capability column (x) against expected maximum toxicity (y), a point per variant, coloured by method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if TOXICITY not in df.columns:
        raise DetoxflowError(f"{source}: no column {TOXICITY}")
    columns = capability_columns(df)
    if not columns:
        raise DetoxflowError(f"{source}: no capability_ column with a value (is the capability stage enabled?)")
    ncols = min(3, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.2 * nrows), squeeze=False)
    for ax, column in zip(axes.flat, columns):
        for method, group in df.groupby("method", sort=False):
            ax.scatter(group[column], group[TOXICITY], label=method, s=40)
            for _, r in group.iterrows():
                ax.annotate(r["variant"], (r[column], r[TOXICITY]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        better = "lower" if column.endswith("perplexity") else "higher"
        ax.set_xlabel(f"{column[len(PREFIX):]} ({better} is better)")
        ax.set_ylabel("expected maximum toxicity (lower is better)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(columns):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Capability vs toxicity per variant")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
