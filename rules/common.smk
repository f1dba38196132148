# Shared helpers: config validation, paths, and the variant registry that the
# method rule files extend.
import json
import os

import yaml

from detoxflow.cli import expose_cli_beside_interpreter
from detoxflow.config import deep_update, validate_config
from detoxflow.errors import DetoxflowError

# config.yaml holds the defaults; --configfile files and --config values (already
# in `config`) are deep-merged over it, so an overlay only names what changes.
_overrides = dict(config)
config.clear()
with open(os.path.join(workflow.basedir, "config.yaml")) as _fh:
    config.update(yaml.safe_load(_fh) or {})
deep_update(config, _overrides)
try:
    validate_config(config, os.path.join(workflow.basedir, "workflow", "schemas"))
except DetoxflowError as exc:
    raise WorkflowError(str(exc)) from None

expose_cli_beside_interpreter()

# A relative data_root (as in workflow/presets/offline.yaml) is relative to this
# repository, whatever --directory the workflow runs in.
if config["data_root"] and not os.path.isabs(config["data_root"]):
    config["data_root"] = os.path.normpath(os.path.join(workflow.basedir, config["data_root"]))

ENV = "../envs/detoxflow.yaml"
RESULTS = "results"
MODELS = f"{RESULTS}/models"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"

# Model variants (folders under results/models) that go through the evaluation.
# Method rule files append theirs when enabled.
MODEL_VARIANTS = ["base"]
# Extra per-model metric files (a pattern with {model}) merged into the summary;
# e.g. SafeEdit defense metrics.
EXTRA_MODEL_METRICS = []
# Extra outputs a method wants built by `all` and shown in the report (plots...).
EXTRA_TARGETS = []


def as_json(obj):
    """Serialise a config section for a rule's params (passed as one CLI argument)."""
    return json.dumps(obj, sort_keys=True)


def recipe_path(name):
    if name not in config["datasets"]:
        raise WorkflowError(
            f"dataset recipe '{name}' is referenced but not defined under `datasets:` "
            f"(defined: {', '.join(sorted(config['datasets'])) or 'none'})"
        )
    return f"{RESULTS}/data/{name}.jsonl"


def model_runtime_args():
    m = config["model"]
    return f"--dtype {m['dtype']} --device {m['device']}" + (
        " --trust-remote-code" if m["trust_remote_code"] else ""
    )


# Evaluation runs and summary inputs -------------------------------------------

EVAL = config["evaluation"]


def eval_runs():
    runs = [(m, "plain") for m in MODEL_VARIANTS]
    for name in EVAL["preprompts"]:
        # a model of a disabled stage (e.g. aura with aura.enabled: false) is skipped
        for m in (m for m in EVAL["preprompt_models"] if m in MODEL_VARIANTS):
            runs.append((m, name))
    return runs


def preprompt_text(prompting):
    if prompting == "plain":
        return EVAL["generation"]["preprompt"]
    return EVAL["preprompts"][prompting]


def summary_inputs(wildcards):
    runs = eval_runs()
    models = sorted({m for m, _ in runs})
    return {
        "toxicity": [f"{RESULTS}/eval/{m}/{p}/toxicity.json" for m, p in runs],
        "scored": [f"{RESULTS}/eval/{m}/{p}/toxicity.jsonl" for m, p in runs],
        "perplexity": [f"{RESULTS}/eval/{m}/perplexity.json" for m in models],
        "extra": [pattern.format(model=m) for pattern in EXTRA_MODEL_METRICS for m in models],
    }


def summary_outputs():
    return [
        f"{RESULTS}/summary.csv",
        f"{RESULTS}/summary.md",
        f"{RESULTS}/plots/toxicity_vs_perplexity.png",
        f"{RESULTS}/samples.csv",
    ] + EXTRA_TARGETS
