"""Names of the task-vector branch's model variants and jobs, for ``rules/task_vectors.smk``.

Pure functions of the validated ``task_vectors`` config section (no Snakemake
import), so the rule file stays declarative and the naming is unit-testable.
"""

from __future__ import annotations

# finetune keys that steer the workflow (launch, resources), not the training
LAUNCH_KEYS = ("accelerate", "threads", "mem_mb", "runtime")


def lam_name(value) -> str:
    """A lambda as it appears in folder names: tv_merge_n5_l1.0, tv_single_l0.4."""
    return repr(float(value))


def n_splits(tv: dict) -> list[int]:
    n = tv["n_splits"]
    return [n] if isinstance(n, int) else list(n)


def variants(tv: dict) -> list[dict]:
    """Every variant of the branch, base first: {model, family, n_splits, lambda}, no duplicates."""
    out = [{"model": "base", "family": "base", "n_splits": None, "lambda": 0.0}]
    out += [{"model": f"tv_single_l{lam_name(lam)}", "family": "single", "n_splits": 1, "lambda": float(lam)}
            for lam in tv["single_lambdas"]]
    out += [{"model": f"tv_merge_n{n}_l{lam_name(lam)}", "family": "merge", "n_splits": n, "lambda": float(lam)}
            for n in n_splits(tv) for lam in tv["merge_lambdas"]]
    if tv["gradient_ascent"]:
        out.append({"model": "tv_ascent", "family": "ascent", "n_splits": 1, "lambda": None})
    seen, unique = set(), []
    for v in out:
        if v["model"] not in seen:
            seen.add(v["model"])
            unique.append(v)
    return unique


def evaluation_points(variants: list[dict], eval_dir: str) -> list[dict]:
    """Each variant with the evaluation files ``tv-choose-lambda`` reads: its perplexity and plain-run toxicity."""
    return [dict(v, perplexity=f"{eval_dir}/{v['model']}/perplexity.json",
                 toxicity=f"{eval_dir}/{v['model']}/plain/toxicity.json") for v in variants]


def model_variants(tv: dict) -> list[str]:
    """Model folders (under results/models) that the evaluation must evaluate."""
    return [v["model"] for v in variants(tv) if v["family"] != "base"]


def family_splits(family: str) -> int:
    """Parts of a negated family's folder name: ``single`` -> 1, ``merge_n5`` -> 5."""
    return 1 if family == "single" else int(family[len("merge_n"):])


def family_method(family: str) -> str:
    """The method name a negated family records in detoxflow.json."""
    return "task_vector" if family == "single" else "task_vector_merge"


def finetuned_dirs(root: str, objective: str, n) -> list[str]:
    return [f"{root}/finetuned/{objective}_n{n}_part{i}" for i in range(int(n))]


def stats_families(tv: dict, root: str) -> dict[str, list[str]]:
    """Task-vector families compared by ``tv-vector-stats``: the single model, each merge, the ascent model."""
    families = {}
    if tv["single_lambdas"]:
        families["single"] = finetuned_dirs(root, "descent", 1)
    for n in n_splits(tv):
        if tv["merge_lambdas"]:
            families[f"merge_n{n}"] = finetuned_dirs(root, "descent", n)
    if tv["gradient_ascent"]:
        families["ascent"] = finetuned_dirs(root, "ascent", 1)
    return families


def training_settings(finetune: dict) -> dict:
    return {k: v for k, v in finetune.items() if k not in LAUNCH_KEYS}


def launcher(finetune: dict) -> str:
    """``detoxflow``, or ``accelerate launch ... -m detoxflow`` for multi-GPU data parallelism."""
    acc = finetune["accelerate"]
    if not acc["enabled"]:
        return "detoxflow"
    cfg = f"--config_file {acc['config_file']} " if acc["config_file"] else ""
    return f"accelerate launch {cfg}--num_processes {acc['num_processes']} -m detoxflow"
