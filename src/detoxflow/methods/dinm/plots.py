"""The per-layer distance profiles of DINM's location, one line per located instance.

Read from the edit records (``results/dinm/model_edits.json``, ``results/dinm/per_instance/edits.json``):
every located instance keeps the profile of each distance (:mod:`.locate`). One panel per distance;
each profile is divided by its own maximum, so instances of different scales share an axis and the
chosen layer is where a line reaches 1 (marked).
"""

from __future__ import annotations

import os
from typing import Sequence

from ...errors import DetoxflowError
from ...io import atomic_path

TITLES = {
    "masked": "L2 distance (masked)",
    "relative": "L2 / mean state norm (relative)",
    "cosine": "1 - cosine similarity (cosine)",
    "reference": "reference code's distance",
}


def profiles_of(records: Sequence[dict], source: str) -> list[dict]:
    """The located instances of edit records (``{"edits": [...]}`` files), each tagged with ``source``."""
    out = []
    for edit in records:
        for located in edit.get("profiles") or []:
            out.append(dict(located, source=source))
    return out


def plot_layer_profiles(located: Sequence[dict], path: str | os.PathLike, *, chosen_mode: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not located:
        raise DetoxflowError("no DINM location profiles in the edit records (dinm.layer fixes the layer, or the "
                             "records predate profiles): nothing to plot")
    modes = [m for m in TITLES if any(m in loc["profiles"] for loc in located)]
    sources = list(dict.fromkeys(loc["source"] for loc in located))
    colours = {s: f"C{i}" for i, s in enumerate(sources)}
    fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 4.2), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for loc in located:
            values = loc["profiles"].get(mode)
            if not values:
                continue
            top = max(values) or 1.0
            scaled = [v / top for v in values]
            best = scaled.index(max(scaled))
            ax.plot(range(len(scaled)), scaled, color=colours[loc["source"]], alpha=0.6, lw=1)
            ax.plot([best], [scaled[best]], "o", color=colours[loc["source"]], ms=4)
        chosen = " (chooses)" if mode == chosen_mode else ""
        ax.set_title(TITLES[mode] + chosen, fontsize=10)
        ax.set_xlabel("decoder layer (0-indexed)")
        ax.set_ylabel("distance / its maximum")
        ax.grid(alpha=0.3)
    for s in sources:
        axes[0][0].plot([], [], color=colours[s], label=s)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"DINM toxic-layer location: per-layer distance of safe vs unsafe response, "
                 f"{len(located)} instances (dot: the layer each distance picks)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
