"""Choosing lambda from evaluated variants.

Two rules, both reported:

- **Ilharco et al.**: for each family of negated models (the single-model
  baseline, the merged model for each N), the largest lambda whose perplexity
  stays within ``ppl_margin`` (absolute) of the base model's. lambda = 0 is the
  base model itself, so the rule always has an answer.
- **Toxicity matching (Kim et al.)**: for each merged model, the single-model
  lambda whose toxicity is closest to the merged model's. At matched toxicity
  the paper compares the perplexity increase over the base; the share of the
  baseline's increase that merging avoids is reported as
  ``degradation_reduction`` = 1 - increase_merged / increase_single.
  A coarse lambda sweep rarely holds a close match, so the single-model curve
  (base = lambda 0, then each lambda) is also interpolated linearly at the
  merged model's toxicity: ``interpolated_single_lambda``,
  ``interpolated_single_perplexity`` and ``interpolated_degradation_reduction``
  (None when no two neighbouring lambdas bracket that toxicity).

Inputs are the evaluation's files of each variant, named by the caller (the
workflow knows where they are): a metrics file holding ``perplexity`` and the
``toxicity.json`` of its plain run.
"""

from __future__ import annotations

import math

from ...errors import DetoxflowError
from ...io import atomic_path, read_json, read_metrics, write_json

TOXICITY_KEYS = ("expected_max_toxicity", "toxicity_probability", "mean_toxicity", "toxic_fraction")


def read_point(variant: dict) -> dict:
    """One variant's perplexity and toxicity metrics (plus its family, N and lambda).

    ``variant``: ``model``, ``family``, ``n_splits``, ``lambda`` and the files
    ``perplexity`` (a metrics file) and ``toxicity`` (the plain run's toxicity.json).
    """
    model = variant["model"]
    ppl = read_metrics(variant["perplexity"])
    tox = read_json(variant["toxicity"])
    if "perplexity" not in ppl:
        raise DetoxflowError(f"{variant['perplexity']}: no 'perplexity' metric")
    point = {"model": model, "family": variant["family"], "n_splits": variant.get("n_splits"),
             "lambda": variant.get("lambda"), "perplexity": float(ppl["perplexity"])}
    for key in TOXICITY_KEYS:
        if key in tox:
            point[key] = float(tox[key])
    return point


def family_key(point: dict) -> str:
    return "single" if point["family"] == "single" else f"merge_n{point['n_splits']}"


def ilharco(points: list[dict], base: dict, margin: float, metric: str) -> dict:
    """Per family: the largest lambda whose perplexity <= base + margin (lambda 0 = base)."""
    limit = base["perplexity"] + margin
    families: dict[str, list[dict]] = {}
    for p in points:
        if p["family"] in ("single", "merge"):
            families.setdefault(family_key(p), []).append(p)
    out = {}
    for fam, pts in sorted(families.items()):
        ok = [p for p in pts if math.isfinite(p["perplexity"]) and p["perplexity"] <= limit]
        if ok:
            best = max(ok, key=lambda p: p["lambda"])
            out[fam] = {"lambda": best["lambda"], "model": best["model"], "perplexity": best["perplexity"],
                        metric: best.get(metric), "perplexity_limit": limit}
        else:
            out[fam] = {"lambda": 0.0, "model": base["model"], "perplexity": base["perplexity"],
                        metric: base.get(metric), "perplexity_limit": limit,
                        "note": "every evaluated lambda exceeds the perplexity limit; lambda 0 is the base model"}
        out[fam]["lambdas_evaluated"] = sorted(p["lambda"] for p in pts)
    return out


def interpolate_single(singles: list[dict], base: dict, metric: str, target: float) -> tuple[float, float] | None:
    """(lambda, perplexity) where the single-model curve reaches ``target`` toxicity, linearly between lambdas."""
    curve = [{"lambda": 0.0, metric: base.get(metric), "perplexity": base["perplexity"]}] + sorted(
        singles, key=lambda p: p["lambda"])
    curve = [p for p in curve if p.get(metric) is not None]
    for a, b in zip(curve, curve[1:]):
        ta, tb = a[metric], b[metric]
        if ta != tb and min(ta, tb) <= target <= max(ta, tb):
            frac = (target - ta) / (tb - ta)
            return (a["lambda"] + frac * (b["lambda"] - a["lambda"]),
                    a["perplexity"] + frac * (b["perplexity"] - a["perplexity"]))
    return None


def match_toxicity(points: list[dict], base: dict, metric: str) -> list[dict]:
    """For each merged model, the single-model lambda with the closest toxicity."""
    singles = [p for p in points if p["family"] == "single" and p.get(metric) is not None]
    merged = [p for p in points if p["family"] == "merge" and p.get(metric) is not None]
    rows = []
    for m in sorted(merged, key=lambda p: (p["n_splits"], p["lambda"])):
        row = {"merged_model": m["model"], "n_splits": m["n_splits"], "lambda": m["lambda"],
               f"merged_{metric}": m[metric], "merged_perplexity": m["perplexity"]}
        if singles:
            # closest toxicity; ties go to the smaller lambda (the gentler edit)
            s = min(singles, key=lambda p: (abs(p[metric] - m[metric]), p["lambda"]))
            inc_m = m["perplexity"] - base["perplexity"]
            inc_s = s["perplexity"] - base["perplexity"]
            row.update({
                "single_model": s["model"], "single_lambda": s["lambda"], f"single_{metric}": s[metric],
                "single_perplexity": s["perplexity"], "toxicity_gap": abs(s[metric] - m[metric]),
                "ppl_increase_merged": inc_m, "ppl_increase_single": inc_s,
                "degradation_reduction": (1 - inc_m / inc_s) if inc_s > 0 else None,
            })
            interp = interpolate_single(singles, base, metric, m[metric])
            inc_i = None if interp is None else interp[1] - base["perplexity"]
            row.update({
                "interpolated_single_lambda": None if interp is None else interp[0],
                "interpolated_single_perplexity": None if interp is None else interp[1],
                "interpolated_degradation_reduction": (1 - inc_m / inc_i) if inc_i and inc_i > 0 else None,
            })
        rows.append(row)
    return rows


def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if not math.isfinite(x) or abs(x) >= 1e4:
            return f"{x:.3g}"
        text = f"{x:.{digits}f}".rstrip("0").rstrip(".")
        return text if text not in ("", "-0") else "0"
    return str(x)


def markdown(result: dict) -> str:
    metric = result["metric"]
    lines = ["# Choosing lambda (task-vector negation)", "",
             f"Toxicity metric: `{metric}`; base model perplexity {_fmt(result['base']['perplexity'])}, "
             f"{metric} {_fmt(result['base'].get(metric))}.", "",
             "## All variants", "",
             "| model | family | N | lambda | perplexity | " + " | ".join(TOXICITY_KEYS) + " |",
             "|---|---|---|---|---|" + "---|" * len(TOXICITY_KEYS)]
    for p in result["points"]:
        lines.append(f"| {p['model']} | {p['family']} | {_fmt(p['n_splits'])} | {_fmt(p['lambda'])} | "
                     f"{_fmt(p['perplexity'])} | " + " | ".join(_fmt(p.get(k)) for k in TOXICITY_KEYS) + " |")
    lines += ["", f"## Ilharco's rule (largest lambda with perplexity <= base + {_fmt(result['ppl_margin'])})", "",
              f"| family | lambda | model | perplexity | {metric} |", "|---|---|---|---|---|"]
    for fam, r in result["ilharco"].items():
        lines.append(f"| {fam} | {_fmt(r['lambda'])} | {r['model']} | {_fmt(r['perplexity'])} | {_fmt(r.get(metric))} |")
    lines += ["", f"## Toxicity matching (single-model lambda whose {metric} is closest to the merged model's)", "",
              f"| merged model | merged {metric} | merged ppl | matched single lambda | single {metric} | single ppl "
              f"| ppl increase merged / single | degradation avoided |", "|---|---|---|---|---|---|---|---|"]
    for r in result["matching"]:
        dr = r.get("degradation_reduction")
        lines.append(
            f"| {r['merged_model']} | {_fmt(r[f'merged_{metric}'])} | {_fmt(r['merged_perplexity'])} | "
            f"{_fmt(r.get('single_lambda'))} | {_fmt(r.get(f'single_{metric}'))} | {_fmt(r.get('single_perplexity'))} | "
            f"{_fmt(r.get('ppl_increase_merged'))} / {_fmt(r.get('ppl_increase_single'))} | "
            f"{'-' if dr is None else f'{100 * dr:.1f}%'} |")
    if not result["matching"]:
        lines.append("| (no merged model evaluated) | | | | | | | |")
    else:
        lines += ["", f"Single-model curve interpolated linearly at the merged model's {metric} "
                  "(base = lambda 0; closer than the nearest evaluated lambda when the sweep is coarse):", "",
                  "| merged model | merged ppl | interpolated single lambda | interpolated single ppl | degradation avoided |",
                  "|---|---|---|---|---|"]
        for r in result["matching"]:
            dr = r.get("interpolated_degradation_reduction")
            lines.append(f"| {r['merged_model']} | {_fmt(r['merged_perplexity'])} | "
                         f"{_fmt(r.get('interpolated_single_lambda'))} | {_fmt(r.get('interpolated_single_perplexity'))} | "
                         f"{'-' if dr is None else f'{100 * dr:.1f}%'} |")
    return "\n".join(lines) + "\n"


def choose_lambda(variants: list[dict], *, ppl_margin: float, metric: str) -> dict:
    """Read every variant's evaluation (see :func:`read_point`) and apply both rules.

    ``variants`` must include the base.
    """
    if metric not in TOXICITY_KEYS:
        raise DetoxflowError(f"task_vectors.choose_lambda.metric must be one of {', '.join(TOXICITY_KEYS)}, got {metric!r}")
    bases = [v for v in variants if v["family"] == "base"]
    if len(bases) != 1:
        raise DetoxflowError("choose_lambda needs exactly one variant of family 'base'")
    points = [read_point(v) for v in variants]
    base = next(p for p in points if p["family"] == "base")
    if metric not in base:
        raise DetoxflowError(f"{next(v['toxicity'] for v in variants if v['family'] == 'base')}: no '{metric}' key")
    order = {"base": 0, "single": 1, "merge": 2, "ascent": 3}
    points.sort(key=lambda p: (order.get(p["family"], 9), p["n_splits"] or 0, p["lambda"] or 0))
    return {
        "metric": metric, "ppl_margin": ppl_margin, "base": base, "points": points,
        "ilharco": ilharco(points, base, ppl_margin, metric),
        "matching": match_toxicity(points, base, metric),
    }


def write_outputs(result: dict, json_path, md_path) -> None:
    write_json(json_path, result)
    with atomic_path(md_path) as tmp:
        tmp.write_text(markdown(result))
