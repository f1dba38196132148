"""The AurA stage as steps the CLI (and so the DAG) runs: responses -> expertise -> folded variants, plots."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from ...io import read_jsonl, write_jsonl
from ...models import load_model, load_tokenizer, read_metadata, save_model_folder
from ...runtime import seed_everything
from .expertise import compute_expertise, load_expertise, save_expertise
from .fold import fold_alphas
from .interventions import compute_alphas, count_dampened
from .modules import output_units, select_modules
from .responses import record_responses, sample_sentences, save_responses

log = logging.getLogger(__name__)


def run_responses(
    model_dir: str | os.PathLike,
    toxic_path: str | os.PathLike,
    nontoxic_path: str | os.PathLike,
    settings: dict,
    out: str | os.PathLike,
    sentences_out: str | os.PathLike | None = None,
    *,
    dtype: str = "float32",
    device: str = "auto",
    trust_remote_code: bool = False,
    names: tuple[str, str] = ("toxic", "nontoxic"),
    **placement,
) -> dict:
    """Record pooled responses; ``settings`` holds the recording keys of the validated ``aura`` section,
    ``placement`` (``device_map``, ``max_memory``, ``offload_folder``) goes to :func:`detoxflow.models.load_model`."""
    cfg = settings
    seed_everything(int(cfg["seed"]))
    texts, labels = sample_sentences(
        read_jsonl(toxic_path), read_jsonl(nontoxic_path), int(cfg["sentences_per_class"]), int(cfg["seed"]),
        names=names,
    )
    model = load_model(model_dir, dtype=dtype, device=device, trust_remote_code=trust_remote_code, **placement)
    tokenizer = load_tokenizer(model_dir, padding_side="right")
    modules = select_modules(model, cfg["modules"])
    n_units = sum(output_units(m) for m in modules.values())
    log.info("recording %d modules (%d units) over %d sentences", len(modules), n_units, len(texts))
    t0 = time.perf_counter()
    responses, n_tokens = record_responses(
        model, tokenizer, texts, modules,
        pooling=cfg["pooling"], batch_size=int(cfg["batch_size"]), max_tokens=int(cfg["max_tokens"]),
        pool_special_tokens=bool(cfg["pool_special_tokens"]),
    )
    seconds = time.perf_counter() - t0
    meta = {
        "model": str(model_dir),
        "pooling": cfg["pooling"],
        "patterns": cfg["modules"],
        "max_tokens": int(cfg["max_tokens"]),
        "n_sentences": len(texts),
        "n_tokens": n_tokens,
        "n_units": n_units,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "seconds": round(seconds, 3),
    }
    save_responses(out, responses, labels, meta)
    if sentences_out is not None:
        write_jsonl(sentences_out, ({"text": t, "toxic": int(l)} for t, l in zip(texts, labels)))
    log.info("responses: %d tokens in %.1f s (%.0f tokens/s) -> %s", n_tokens, seconds,
             n_tokens / max(seconds, 1e-9), out)
    return meta


def run_expertise(responses_path: str | os.PathLike, out: str | os.PathLike) -> dict:
    t0 = time.perf_counter()
    aurocs, meta = compute_expertise(responses_path)
    meta = dict(meta, auroc_seconds=round(time.perf_counter() - t0, 3))
    save_expertise(out, aurocs, meta)
    n = sum(a.numel() for a in aurocs.values())
    log.info("AUROC of %d units in %.2f s -> %s", n, meta["auroc_seconds"], out)
    return meta


def _load_dtype(model_dir: str | os.PathLike, dtype: str) -> str:
    """``auto`` keeps the precision the folder was saved in (folding runs on CPU)."""
    if dtype != "auto":
        return dtype
    return read_metadata(model_dir).get("dtype", "float32")


def run_fold(
    model_dir: str | os.PathLike,
    expertise_path: str | os.PathLike,
    spec: dict,
    out: str | os.PathLike,
    *,
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> Path:
    aurocs, meta = load_expertise(expertise_path)
    alphas = compute_alphas(
        aurocs, spec["method"], k=spec["k"], damp_alpha=spec["alpha"], strength=spec["strength"],
    )
    model = load_model(model_dir, dtype=_load_dtype(model_dir, dtype), device="cpu",
                       trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(model_dir)
    # Same checks as at recording time (module exists, is Linear/Conv1D, weight not tied).
    select_modules(model, ["re:" + "|".join(re.escape(n) for n in alphas)])
    changed = fold_alphas(model, alphas)
    n_units = sum(a.numel() for a in alphas.values())
    params = {"n_dampened": count_dampened(alphas), "n_units": n_units,
              "sentences_per_class": int(meta.get("n_toxic", 0))}
    if spec["method"] == "aura":
        params["strength"] = float(spec["strength"])
    else:
        params["k"] = int(spec["k"])
        if spec["method"] == "damp":
            params["alpha"] = float(spec["alpha"])
    log.info("%s: %d of %d units dampened in %d layers", spec["name"], params["n_dampened"], n_units, changed)
    return save_model_folder(model, tokenizer, out, method=spec["method"], params=params)


def run_plots(expertise_path, variants: list[dict], auroc_plot, dampened_plot, stats_csv, stats_json) -> None:
    from .plots import plot_auroc_alpha, plot_dampened, write_stats

    aurocs, _ = load_expertise(expertise_path)
    plot_auroc_alpha(auroc_plot, aurocs, variants)
    plot_dampened(dampened_plot, aurocs, variants)
    write_stats(stats_csv, stats_json, aurocs, variants)
