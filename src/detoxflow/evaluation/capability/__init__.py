"""Capability evaluation: every model folder on lm-evaluation-harness tasks, one column per task metric.

``lastword`` (offline, built from local text), ``csum`` (XSum ROUGE-1 with rouge-score) and any task
lm_eval knows. Evaluation side: knows no method. Importing this package does not import lm_eval;
the modules that run it import it where they need it.
"""

from .harness import PREFIX, evaluate_tasks, flatten_results
from .lastword import build_lastword_rows, lastword_task_config
from .rouge import csum_task_config, rouge1
from .tasks import PROJECT_TASKS, check_task_names, hub_switched_off, plan_tasks

__all__ = ["PREFIX", "PROJECT_TASKS", "build_lastword_rows", "check_task_names", "csum_task_config",
           "evaluate_tasks", "flatten_results", "hub_switched_off", "lastword_task_config", "plan_tasks", "rouge1"]
