"""Run lm_eval on a loaded model folder and turn its results into summary columns.

The model is the folder loaded by the project's own loader (so ``model.dtype``, ``device_map``,
``max_memory`` and offloading work as for every other evaluation step) and handed to lm_eval's
``hf`` model class (``HFLM``) as an instance; lm_eval does the rest (prompts, batching,
log-likelihoods, greedy generation, metrics).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping

from ...errors import DetoxflowError

log = logging.getLogger(__name__)

PREFIX = "capability_"
#: bootstrap draws for the stderr of non-mean metrics (perplexity); lm_eval's default (100,000) takes minutes
BOOTSTRAP_ITERS = 1000


def _first_line(exc: BaseException) -> str:
    """The first line of an error, and of the error that caused it (datasets wraps the parser's)."""
    lines = []
    while exc is not None and len(lines) < 2:
        text = str(exc).strip()
        lines.append(text.splitlines()[0] if text else type(exc).__name__)
        exc = exc.__cause__
    return ": ".join(lines)


def load_tasks(specs: list, manager) -> dict:
    """name -> lm_eval Task for every spec (a group or tag expands to its tasks: one column per task
    metric, no group aggregate), loading each task's data now, so that a task whose data cannot be
    read is named in the error."""
    tasks: dict = {}
    for spec in specs:
        name = spec if isinstance(spec, str) else spec["task"]
        try:
            loaded = manager.load([spec])
        except DetoxflowError:
            raise
        except Exception as exc:  # datasets / network / schema errors of one task
            raise DetoxflowError(f"capability task '{name}': could not load its data ({_first_line(exc)})") from None
        tasks.update(loaded["tasks"])
    return tasks


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def flatten_results(results: Mapping[str, Mapping[str, Any]]) -> tuple[dict, dict]:
    """lm_eval's ``results`` -> (columns ``capability_<task>_<metric>``, their standard errors).

    lm_eval keys a value ``<metric>,<filter>``; the filter is left out of the column name unless
    one metric of a task comes with several filters (``capability_<task>_<metric>_<filter>``).
    A value lm_eval could not compute ("N/A", NaN) becomes None.
    """
    metrics: dict[str, float | None] = {}
    stderr: dict[str, float | None] = {}
    for task, values in results.items():
        pairs = [tuple(k.split(",", 1)) for k in values if "," in k]
        measured = [(m, f) for m, f in pairs if not m.endswith("_stderr")]
        filters: dict[str, list[str]] = {}
        for m, f in measured:
            filters.setdefault(m, []).append(f)
        for m, f in measured:
            column = f"{PREFIX}{task}_{m}" if len(filters[m]) == 1 else f"{PREFIX}{task}_{m}_{f}"
            metrics[column] = _number(values[f"{m},{f}"])
            stderr[column] = _number(values.get(f"{m}_stderr,{f}"))
    return metrics, stderr


def evaluate_tasks(model, tokenizer, specs: list, manager, settings: Mapping[str, Any]) -> tuple[dict, dict]:
    """Evaluate a loaded model on the task ``specs`` of :func:`.tasks.plan_tasks`; (metrics, details).

    ``settings`` is the capability section (``batch_size``, ``num_fewshot``, ``limit``, ``tasks``).
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    tasks = load_tasks(specs, manager)
    os.environ.setdefault("DISABLE_MULTIPROC", "1")  # lm_eval's bootstrap would start a process pool
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=int(settings["batch_size"]))
    out = lm_eval.simple_evaluate(
        model=lm, tasks=list(tasks.values()), num_fewshot=int(settings["num_fewshot"]), limit=settings["limit"],
        task_manager=manager, log_samples=False, bootstrap_iters=BOOTSTRAP_ITERS,
    )
    if out is None:  # only on non-zero ranks of a distributed run
        raise DetoxflowError("lm_eval returned no results (a distributed run's non-zero rank?)")
    metrics, stderr = flatten_results(out["results"])
    details = {
        "tasks": list(settings["tasks"]),
        "n_samples": {t: v.get("effective", v.get("original")) if isinstance(v, Mapping) else v
                      for t, v in out.get("n-samples", {}).items()},
        "stderr": stderr,
        "num_fewshot": int(settings["num_fewshot"]),
        "limit": settings["limit"],
        "lm_eval_version": out.get("lm_eval_version"),
        "task_versions": out.get("versions", {}),
    }
    log.info("capability: %s", metrics)
    return metrics, details
