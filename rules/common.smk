# Configuration, paths and the stage registry every other rule file uses.
#
# Stage interface: a rule file that adds to the comparison calls
#   register_stage(name, variants=[...], model_metrics=[...], targets=[...])
# once (when its stage is enabled); see detoxflow.stages and docs/ARCHITECTURE.md.
import json
import os

from detoxflow.cli import expose_cli_beside_interpreter
from detoxflow.config import resolve_workflow_config
from detoxflow.errors import DetoxflowError
from detoxflow.stages import Stage, StageRegistry

# The checkout this workflow lives in (also when another workflow uses it as a module).
REPO = os.path.dirname(os.path.abspath(str(workflow.current_basedir)))

# config.yaml holds the defaults; --configfile overlays and --config values are merged over
# it with one parsing rule (detoxflow.config). Used as a module, the outer workflow's
# `config:` takes the place of the overlays.
try:
    if len(workflow.modifier_stack) > 1:  # inside another workflow's `module` directive
        _config = resolve_workflow_config(
            [os.path.join(REPO, "config.yaml")], overrides=config, base_dir=REPO
        )
    else:
        _config = resolve_workflow_config(
            [os.path.join(REPO, "config.yaml"), *workflow.config_settings.configfiles],
            command_line=workflow.config_settings.config,
            base_dir=REPO,
        )
except DetoxflowError as exc:
    raise WorkflowError(str(exc)) from None
config.clear()
config.update(_config)

expose_cli_beside_interpreter()

ENV = "../envs/detoxflow.yaml"
RESULTS = "results"
MODELS = f"{RESULTS}/models"
EVAL = f"{RESULTS}/eval"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"

# Every model variant the evaluation evaluates comes from one registered stage;
# the base model is the first.
STAGES = StageRegistry()


def register_stage(name, *, variants=(), model_metrics=(), targets=()):
    try:
        STAGES.add(
            Stage(name, variants=variants, model_metrics=model_metrics, targets=targets)
        )
    except DetoxflowError as exc:
        raise WorkflowError(str(exc)) from None


register_stage("base", variants=["base"])


def as_json(obj):
    """A value for a rule's params, passed to the CLI as one JSON argument."""
    return json.dumps(obj, sort_keys=True)


def pick(section, *keys):
    """Only the keys of a config section that a job reads (so other keys do not rerun it)."""
    return {k: section[k] for k in keys}


def recipe_path(name):
    if name not in config["datasets"]:
        raise WorkflowError(
            f"dataset recipe '{name}' is referenced but not defined under `datasets:` "
            f"(defined: {', '.join(sorted(config['datasets'])) or 'none'})"
        )
    return f"{RESULTS}/data/{name}.jsonl"


def model_folder(name):
    return f"{MODELS}/{name}"


# --dtype/--device/--trust-remote-code of every command that loads a model (config `model:`)
RUNTIME_ARGS = (
    f"--dtype {config['model']['dtype']} --device {config['model']['device']}"
    + (" --trust-remote-code" if config["model"]["trust_remote_code"] else "")
)
