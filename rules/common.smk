# Configuration, paths and the stage registry every other rule file uses.
#
# Stage interface: a rule file that adds to the comparison calls
#   register_stage(name, variants=[...], model_metrics=[...], targets=[...])
# once (when its stage is enabled); see detoxflow.stages and docs/ARCHITECTURE.md.
import json
import os
import shlex

from detoxflow.cli import expose_cli_beside_interpreter
from detoxflow.config import resolve_workflow_config
from detoxflow.errors import DetoxflowError
from detoxflow.stages import Stage, StageRegistry

# The checkout this workflow lives in (also when another workflow uses it as a module).
REPO = os.path.dirname(os.path.abspath(str(workflow.current_basedir)))
# Inside another workflow's `module` directive (see README, "Using detoxflow as a module").
IN_MODULE = len(workflow.modifier_stack) > 1


def module_config_error(exc):
    """A config error of module use, saying that the keys are those of the module's `config:`."""
    return WorkflowError(
        f"detoxflow used as module '{workflow.modifier.namespace}': the mapping its `module` block passes "
        f"as `config:` is detoxflow's config (keys below are inside it)\n{exc}"
    )


def refuse_module_prefix():
    """`prefix:` rewrites inputs and outputs but not the paths some jobs take as parameters (the summary's
    spec, the fine-tune's state folder), so a prefixed module would read and write in two places."""
    paths = workflow.modifier.path_modifier
    if getattr(paths, "prefix", None) or getattr(paths, "_prefix_replacements", None):
        raise WorkflowError(
            f"detoxflow used as module '{workflow.modifier.namespace}': `prefix:` / `replace_prefix:` are not "
            "supported (jobs name result paths in their parameters, which Snakemake does not rewrite); "
            "run the outer workflow in the folder that should hold results/ (or set `workdir:`)"
        )


# config.yaml holds the defaults; --configfile overlays and --config values are merged over
# it with one parsing rule (detoxflow.config). Used as a module, the outer workflow's
# `config:` takes their place: Snakemake read it with YAML 1.1 (`1e-5` stays a string), so its
# values are resolved as --config values are; a relative data_root is taken relative to the
# working directory, like every other path of the outer workflow.
try:
    if IN_MODULE:
        refuse_module_prefix()
        if not isinstance(config, dict):
            raise DetoxflowError(f"the module's `config:` must be a mapping, not {type(config).__name__}")
        _config = resolve_workflow_config(
            [os.path.join(REPO, "config.yaml")], command_line=config, base_dir=os.getcwd()
        )
    else:
        _config = resolve_workflow_config(
            [os.path.join(REPO, "config.yaml"), *workflow.config_settings.configfiles],
            command_line=workflow.config_settings.config,
            base_dir=REPO,
        )
except DetoxflowError as exc:
    raise (module_config_error(exc) if IN_MODULE else WorkflowError(str(exc))) from None
# completed in place: used as a module, the outer workflow's mapping then holds the config the module runs
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
        STAGES.add(Stage(name, variants=variants, model_metrics=model_metrics, targets=targets))
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


# the model runtime options of every command that loads a model (config `model:`)
MODEL = config["model"]
RUNTIME_ARGS = " ".join(
    arg
    for arg in (
        f"--dtype {MODEL['dtype']} --device {MODEL['device']} --device-map {MODEL['device_map']}",
        MODEL["max_memory"] and f"--max-memory {shlex.quote(as_json(MODEL['max_memory']))}",
        MODEL["offload_folder"] and f"--offload-folder {shlex.quote(MODEL['offload_folder'])}",
        MODEL["trust_remote_code"] and "--trust-remote-code",
    )
    if arg
)


# The evaluation: runs, settings of the evaluation steps, the summary's inputs -----------------

EVALUATION = config["evaluation"]
SAFEEDIT = config["safeedit"]
SAFEEDIT_DIR = f"{RESULTS}/safeedit"
# What decides a model's SafeEdit responses; DINM's per-instance protocol answers with the same.
SAFEEDIT_EVAL = pick(SAFEEDIT, "n_instances", "prompt", "generation")


def eval_runs():
    """(model, prompting) of every run: each variant plain, plus the pre-prompt runs asked for."""
    variants = STAGES.variants()
    runs = [(m, "plain") for m in variants]
    for name in EVALUATION["preprompts"]:
        # a model of a disabled stage (e.g. aura with aura.enabled: false) is skipped
        runs += [(m, name) for m in EVALUATION["preprompt_models"] if m in variants]
    return runs


def preprompt_text(prompting):
    if prompting == "plain":
        return EVALUATION["generation"]["preprompt"]
    return EVALUATION["preprompts"][prompting]


def toxicity_settings():
    """The toxicity section without the blocks of scorers not in use."""
    tox = EVALUATION["toxicity"]
    settings = pick(tox, "scorer", "threshold", "batch_size")
    block = tox["scorer"].replace("-", "_")
    if block in tox:
        settings[block] = tox[block]
    return settings


def judge_settings():
    """The judge section without the blocks of judges not in use."""
    judge = SAFEEDIT["judge"]
    return {"kind": judge["kind"], judge["kind"]: judge[judge["kind"]]}


def safeedit_data_settings():
    """The data section without the blocks of sources not in use."""
    data = SAFEEDIT["data"]
    return {"source": data["source"], data["source"]: data[data["source"]]}


def standin_answers_with_model():
    data = SAFEEDIT["data"]
    return data["source"] == "standin" and data["standin"]["unsafe_response"] == "model"


def safeedit_data_inputs(wildcards):
    """The stand-in reads the AdvBench recipe (and the base model when it answers as the unsafe response)."""
    data = SAFEEDIT["data"]
    if data["source"] != "standin":
        return {}
    inputs = {"advbench": recipe_path(data["standin"]["advbench"])}
    if standin_answers_with_model():
        inputs["model"] = model_folder("base")
    return inputs


def summary_runs():
    """What the summary reads, named explicitly: each run's files and each model's folder and metrics."""
    runs = eval_runs()
    models = list(dict.fromkeys(m for m, _ in runs))
    return {
        "runs": [
            {
                "model": m,
                "prompting": p,
                "toxicity": f"{EVAL}/{m}/{p}/toxicity.json",
                "scored": f"{EVAL}/{m}/{p}/toxicity.jsonl",
            }
            for m, p in runs
        ],
        "models": {
            m: {
                "folder": model_folder(m),
                "metrics": [f"{EVAL}/{m}/perplexity.json", *STAGES.model_metrics(m)],
            }
            for m in models
        },
    }


def summary_inputs(wildcards):
    spec = summary_runs()
    return {
        "toxicity": [r["toxicity"] for r in spec["runs"]],
        "scored": [r["scored"] for r in spec["runs"]],
        "folders": [m["folder"] for m in spec["models"].values()],
        "metrics": [f for m in spec["models"].values() for f in m["metrics"]],
    }


# The capability stage (rules/capability.smk) ------------------------------------------------------


def capability_settings():
    """What decides a model's capability metrics (the lastword block only shapes its data file)."""
    return pick(config["capability"], "tasks", "limit", "num_fewshot", "batch_size", "local_copies", "csum")


def capability_text(wildcards):
    """The text recipe the lastword task is built from (looked up only when the task's data is needed)."""
    return recipe_path(config["capability"]["lastword"]["source"])


def capability_inputs(wildcards):
    """The model folder, and the lastword task's examples when the task is asked for."""
    inputs = {"model": model_folder(wildcards.model)}
    if "lastword" in config["capability"]["tasks"]:
        inputs["lastword"] = f"{RESULTS}/capability/lastword.jsonl"
    return inputs


# The DINM stage (rules/dinm.smk) -------------------------------------------------------------------


def dinm_profile_inputs(wildcards):
    """The edit records whose location profiles are plotted: the dinm model's, and the per-instance protocol's."""
    inputs = {"model": f"{RESULTS}/dinm/model_edits.json"}
    if config["dinm"]["per_instance"]["enabled"]:
        inputs["per_instance"] = f"{RESULTS}/dinm/per_instance/edits.json"
    return inputs


# The act stage (rules/act.smk) ---------------------------------------------------------------------


def act_maps(variant):
    v = ACT_VARIANTS[variant]
    return f"{ACT_DIR}/{v['start']}/{v['method']}/maps.safetensors"


# The steering stage (rules/steering.smk) -----------------------------------------------------------


def steering_estimate_inputs(wildcards):
    inputs = {"model": model_folder(wildcards.steering_start)}
    if wildcards.steering_method == "iti_c":
        inputs["toxic"] = recipe_path(STEERING["toxic"])
        inputs["nontoxic"] = recipe_path(STEERING["nontoxic"])
    return inputs


def steering_estimate_settings(wildcards):
    """Only what the estimation of this method reads (strengths and the other method's keys rerun nothing)."""
    if wildcards.steering_method == "actadd":
        return as_json({"actadd": pick(STEERING["actadd"], "layer", "positive", "negative")})
    return as_json(pick(STEERING, "sentences_per_class", "seed", "max_tokens", "batch_size", "pool_special_tokens"))


def steering_data_args(wildcards, input):
    if wildcards.steering_method != "iti_c":
        return ""
    return f"--toxic {input.toxic} --nontoxic {input.nontoxic}"


def steering_directions(variant):
    v = STEERING_VARIANTS[variant]
    return f"{STEERING_DIR}/{v['start']}/{v['method']}.safetensors"
