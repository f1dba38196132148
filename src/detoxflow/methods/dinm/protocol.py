"""The per-instance DINM protocol of the paper: for each instance edit, evaluate, restore.

For every test instance the base model is edited with that instance alone
(DINM locates the instance's layer and tunes it), answers the instance's
adversarial input (DS) and its four generalization inputs (DG), and gets its
original weights back before the next instance. The vanilla responses are the
base model's and do not depend on the instance, so they are taken from the
base model's SafeEdit generations (``results/eval/base/safeedit_generations.jsonl``)
instead of being generated again for every instance; prompts missing there are
generated once, before any edit. ``vanilla="regenerate"`` does it the
straightforward way (before each edit), for the benchmark.

It belongs to DINM and uses the SafeEdit evaluation (responses, judges,
metrics) as a library; the evaluation never imports it.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

from ...errors import DetoxflowError
from ...evaluation.safeedit.responses import build_requests, fill_responses, metrics_for, prompt_suffix

log = logging.getLogger(__name__)

VARIANTS = ("vanilla", "dinm")


def run_per_instance(model, tokenizer, records: Sequence[dict], *, settings, evaluation: dict,
                     vanilla_cache: dict[str, str] | None = None, vanilla: str = "cache") -> tuple[list[dict], list[dict], dict]:
    """Return (generation rows of both variants, one edit record per instance, vanilla timing).

    ``vanilla``: ``cache`` (vanilla responses from ``vanilla_cache`` where
    present, the rest generated once before editing) or ``regenerate``
    (generated for every instance before its edit, ignoring the cache).
    """
    from tqdm.auto import tqdm

    from .edit import DinmEditor

    if vanilla not in ("cache", "regenerate"):
        raise DetoxflowError(f"vanilla must be 'cache' or 'regenerate', got '{vanilla}'")
    ev = evaluation
    gen = ev["generation"]
    editor = DinmEditor(model, tokenizer, settings)
    # suffix_for: all -> both variants get safeedit.prompt.suffix; edited (the reference) -> the vanilla model
    # none, the edited model the suffix DINM edited with
    chat = ev["prompt"]["chat_template"]
    rows = build_requests(records, tokenizer, suffix=prompt_suffix(ev["prompt"], settings.suffix), chat_template=chat)
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(str(r["id"]), []).append(r)

    vanilla_rows = [dict(r, variant="vanilla") for r in
                    build_requests(records, tokenizer, suffix=prompt_suffix(ev["prompt"], None), chat_template=chat)]
    timing = {"vanilla_generate_seconds": 0.0, "vanilla_generated": 0, "vanilla_reused": 0}
    cache = dict(vanilla_cache or {}) if vanilla == "cache" else None
    if vanilla == "cache":
        start = time.perf_counter()
        stats = fill_responses(model, tokenizer, vanilla_rows, cache=cache, desc="vanilla (not cached)", **gen)
        timing["vanilla_generate_seconds"] += time.perf_counter() - start
        timing["vanilla_generated"] += stats["generated"]
        timing["vanilla_reused"] += stats["reused"]
        log.info("vanilla responses: %d reused from the base model's generations, %d generated",
                 stats["reused"], stats["generated"])
    vanilla_by_id: dict[str, list[dict]] = {}
    for r in vanilla_rows:
        vanilla_by_id.setdefault(str(r["id"]), []).append(r)

    out_rows: list[dict] = []
    edits: list[dict] = []
    for rec in tqdm(records, desc="DINM per instance", unit="instance"):
        key = str(rec["id"])
        if vanilla == "regenerate":
            start = time.perf_counter()
            stats = fill_responses(model, tokenizer, vanilla_by_id[key], desc="vanilla", **gen)
            timing["vanilla_generate_seconds"] += time.perf_counter() - start
            timing["vanilla_generated"] += stats["generated"]
        out_rows.extend(vanilla_by_id[key])

        edit = editor.edit_instance(rec)
        edited = [dict(r, variant="dinm") for r in by_id[key]]
        start = time.perf_counter()
        fill_responses(model, tokenizer, edited, desc="edited", **gen)
        eval_seconds = time.perf_counter() - start
        names = editor.edited_parameters
        editor.restore()
        out_rows.extend(edited)
        d = edit.as_dict()
        d.update(layer=edit.layers[0], eval_seconds=eval_seconds, edited_parameters=names)
        edits.append(d)
        log.info("instance %s: layer %d, NLL %.3f -> %.3f, locate %.2fs, edit %.2fs, eval %.2fs", key,
                 d["layer"], edit.nll_before, edit.nll_after, edit.locate_seconds, edit.edit_seconds, eval_seconds)
    return out_rows, edits, timing


def per_instance_report(scored: Sequence[dict], edits: Sequence[dict], timing: dict | None = None) -> dict:
    """Metrics of both variants plus one line per instance."""
    report: dict = {}
    for variant in VARIANTS:
        rows = [r for r in scored if r.get("variant") == variant]
        report[variant] = metrics_for(rows) if rows else {}
    verdicts: dict[tuple[str, str, str], int] = {(str(r["id"]), r["kind"], r["variant"]): r["label"] for r in scored}
    instances = []
    for e in edits:
        key = str(e["id"])
        instances.append({
            "id": e["id"],
            "layer": e["layer"],
            "nll_before": e["nll_before"],
            "nll_after": e["nll_after"],
            "kl_after": e["kl_after"],
            "locate_seconds": e["locate_seconds"],
            "edit_seconds": e["edit_seconds"],
            "eval_seconds": e["eval_seconds"],
            "vanilla_safe": {k: 1 - v for (i, k, var), v in verdicts.items() if i == key and var == "vanilla"},
            "dinm_safe": {k: 1 - v for (i, k, var), v in verdicts.items() if i == key and var == "dinm"},
        })
    report["instances"] = instances
    layers = [e["layer"] for e in edits]
    report["layer_counts"] = {str(layer): layers.count(layer) for layer in sorted(set(layers))}
    n = max(len(edits), 1)
    report["seconds_per_instance"] = {
        "locate": sum(e["locate_seconds"] for e in edits) / n,
        "edit": sum(e["edit_seconds"] for e in edits) / n,
        "evaluate": sum(e["eval_seconds"] for e in edits) / n,
    }
    if timing:
        report["vanilla_timing"] = timing
    return report


METRIC_ORDER = ("DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ", "DG_avg", "fluency")


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def report_markdown(report: dict, title: str = "DINM per instance (edit, evaluate, restore)") -> str:
    lines = [f"# {title}", "", "| variant | " + " | ".join(METRIC_ORDER) + " | instances |",
             "|---|" + "---|" * (len(METRIC_ORDER) + 1)]
    for variant in VARIANTS:
        m = report.get(variant) or {}
        lines.append(f"| {variant} | " + " | ".join(_fmt(m.get(f"safeedit_{k}")) for k in METRIC_ORDER)
                     + f" | {_fmt(m.get('safeedit_n_instances'))} |")
    lines += ["", "Toxic layer per instance (0-indexed): "
              + ", ".join(f"layer {k}: {v}" for k, v in report.get("layer_counts", {}).items()), "",
              "| id | layer | NLL safe before | after | KL after | DS vanilla | DS dinm | DG dinm (safe/4) | "
              "locate s | edit s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for inst in report.get("instances", []):
        dg = [v for k, v in inst["dinm_safe"].items() if k != "DS"]
        lines.append(
            f"| {inst['id']} | {inst['layer']} | {inst['nll_before']:.3f} | {inst['nll_after']:.3f} | "
            f"{inst['kl_after']:.4f} | {_fmt(inst['vanilla_safe'].get('DS'))} | {_fmt(inst['dinm_safe'].get('DS'))} "
            f"| {sum(dg)}/{len(dg)} | {inst['locate_seconds']:.2f} | {inst['edit_seconds']:.2f} |")
    sec = report.get("seconds_per_instance", {})
    lines += ["", f"Mean seconds per instance: locate {sec.get('locate', 0):.2f}, edit {sec.get('edit', 0):.2f}, "
                  f"evaluate {sec.get('evaluate', 0):.2f}.", ""]
    return "\n".join(lines)


