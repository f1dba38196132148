"""Which lm_eval tasks a capability run evaluates, and where each reads its data.

A task named in ``capability.tasks`` is one of

* ``lastword``: the project's offline task over a JSONL file built from local text
  (:mod:`.lastword`);
* ``csum``: the project's XSum ROUGE-1 task (:mod:`.rouge`), hub data or a local copy;
* any task, group or tag lm_eval knows (``lm_eval --tasks list``), reading the hub data set of
  its own YAML, or a local copy of its evaluation split (``capability.local_copies``).

Everything that can be checked without a model is checked here, before the model is loaded: names
lm_eval does not know, local copies that do not exist, and a hub task while the hub is switched off
(``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE``): each stops the job with one line naming the task.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ...errors import DetoxflowError
from .lastword import lastword_task_config
from .rouge import csum_task_config

log = logging.getLogger(__name__)

PROJECT_TASKS = ("lastword", "csum")
OFFLINE_VARIABLES = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


def hub_switched_off() -> str | None:
    """The environment variable that switches the hub off (as datasets / huggingface_hub read it), or None."""
    for var in OFFLINE_VARIABLES:
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return var
    return None


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None = None, *, defaults: bool = True):
    """lm_eval's TaskManager; indexing its ~15,000 task YAMLs takes seconds (built once per process),
    so a run of the project's tasks alone uses one without them (``defaults=False``)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=defaults)


def known_names() -> set[str]:
    """Every task, group and tag name lm_eval knows, plus the project's tasks (reads no data)."""
    return set(task_manager().all_tasks) | set(PROJECT_TASKS)


def check_task_names(names: Sequence[str], known: set[str] | None = None) -> None:
    """Refuse a name that is neither a project task nor an lm_eval task; suggest the closest."""
    known = known_names() if known is None else known
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.75)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise DetoxflowError(f"capability.tasks: '{name}' is neither a task of lm_eval (lm_eval --tasks list) "
                                 f"nor one of the project's ({', '.join(PROJECT_TASKS)}){hint}")


def resolve_local_copy(task: str, path: str, data_root: str | None) -> Path:
    p = Path(path)
    if not p.is_absolute() and data_root:
        p = Path(data_root) / p
    if not p.is_file():
        raise DetoxflowError(f"capability.local_copies.{task}: file not found: {p}")
    return p.resolve()


def _refuse_offline(task: str, var: str) -> None:
    raise DetoxflowError(
        f"capability task '{task}' reads its data set from the Hugging Face hub, but {var} is set (offline): "
        f"give a local copy (capability.local_copies.{task}) or leave the task out (offline, the task "
        f"'lastword' runs on local text)")


def local_copy_yaml(task: str, builtin_yaml: str | os.PathLike, data_file: Path) -> dict:
    """A task YAML that is lm_eval's own ``task`` (its prompts and metrics, through ``include``) reading
    ``data_file`` as its evaluation split instead of the hub data set."""
    return {
        "task": task,
        "include": str(Path(builtin_yaml).resolve()),
        "dataset_path": "json",
        "dataset_name": None,
        # the task evaluates on test_split when it has one, else on validation_split: give both the file
        "dataset_kwargs": {"data_files": {"validation": str(data_file), "test": str(data_file)}},
        "training_split": None,
        "fewshot_split": None,
    }


def plan_tasks(settings: Mapping[str, Any], *, lastword_file: str | None, data_root: str | None,
               include_dir: str | os.PathLike) -> tuple[list, Any]:
    """lm_eval task specs (names and config dicts, in ``settings["tasks"]`` order) and the TaskManager
    that resolves the names. Local copies of lm_eval tasks become task YAMLs under ``include_dir``."""
    tasks = list(settings["tasks"])
    copies = {t: resolve_local_copy(t, p, data_root) for t, p in settings["local_copies"].items() if t in tasks}
    for t in sorted(set(settings["local_copies"]) - set(tasks)):
        log.warning("capability.local_copies.%s: the task is not in capability.tasks; its copy is not read", t)
    if "lastword" in copies:
        raise DetoxflowError("capability.local_copies.lastword: the lastword task is built from a text recipe "
                             "(capability.lastword.source); it takes no local copy")
    if copies and settings["num_fewshot"]:
        raise DetoxflowError(f"capability.local_copies holds only the evaluation split of "
                             f"{', '.join(sorted(copies))}: use num_fewshot: 0 with local copies")
    registry_tasks = [t for t in tasks if t not in PROJECT_TASKS]
    if registry_tasks:
        check_task_names(registry_tasks)
    manager = task_manager(defaults=bool(registry_tasks))
    offline = hub_switched_off()
    for t in tasks:
        if offline and t != "lastword" and t not in copies:
            _refuse_offline(t, offline)

    specs: list = []
    written = []
    for t in tasks:
        if t == "lastword":
            if not lastword_file:
                raise DetoxflowError("capability task 'lastword' needs --lastword (the JSONL of capability-lastword)")
            if not Path(lastword_file).is_file():
                raise DetoxflowError(f"capability task 'lastword': file not found: {lastword_file}")
            specs.append(lastword_task_config(str(Path(lastword_file).resolve())))
        elif t == "csum":
            specs.append(csum_task_config(settings["csum"], copies.get("csum")))
        else:
            if t in copies:
                entry = manager.task_index[t]
                if not getattr(entry, "yaml_path", None):
                    raise DetoxflowError(f"capability.local_copies.{t}: '{t}' is not a single lm_eval task defined "
                                         f"by a YAML file (a group or tag); give copies of its tasks instead")
                path = Path(include_dir) / f"{t}.yaml"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(yaml.safe_dump(local_copy_yaml(t, entry.yaml_path, copies[t]), sort_keys=False))
                written.append(t)
            specs.append(t)
    if written:
        manager = task_manager(str(Path(include_dir).resolve()))
        log.info("capability: local copies for %s", ", ".join(f"{t} ({copies[t]})" for t in written))
    return specs, manager
