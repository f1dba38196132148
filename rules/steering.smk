# Steering baselines of the Linear-AcT paper, folded into plain checkpoints: ITI-c (per-head
# directions added to o_proj's input) and ActAdd (a contrast-pair vector added to the residual
# stream after one block); one model folder per method and strength (iti_c_s<a>, actadd_s<c>),
# plus compositions <start>--<variant> (steering.compose). docs/steering.md.
import re
import sys

from detoxflow.methods.steering.variants import variant_specs as steering_variant_specs

STEERING = config["steering"]
STEERING_DIR = f"{RESULTS}/steering"
try:
    _steering_specs = steering_variant_specs(STEERING)
except DetoxflowError as exc:
    raise WorkflowError(str(exc)) from None
# a start is a variant of an enabled stage included before, or one of this stage's own (from base)
_steering_known = set(STAGES.variants()) | {v["name"] for v in _steering_specs if v["start"] == "base"}
_steering_skipped = [v["name"] for v in _steering_specs if v["start"] not in _steering_known]
if STEERING["enabled"] and _steering_skipped:
    print(
        f"steering.compose: skipping {', '.join(_steering_skipped)} (start model not produced by an enabled stage)",
        file=sys.stderr,
    )
STEERING_VARIANTS = {v["name"]: v for v in _steering_specs if v["name"] not in _steering_skipped}
STEERING_STARTS = sorted({v["start"] for v in STEERING_VARIANTS.values()}) or ["base"]

if STEERING["enabled"]:

    register_stage("steering", variants=STEERING_VARIANTS)


rule steering_estimate:
    input:
        unpack(steering_estimate_inputs),
    output:
        f"{STEERING_DIR}/{{steering_start}}/{{steering_method}}.safetensors",
    log:
        f"{LOGS}/steering/estimate_{{steering_start}}_{{steering_method}}.log",
    benchmark:
        f"{BENCH}/steering/estimate_{{steering_start}}_{{steering_method}}.tsv"
    wildcard_constraints:
        steering_start="|".join(re.escape(s) for s in STEERING_STARTS),
        steering_method="iti_c|actadd",
    conda:
        ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=30,
    params:
        settings=steering_estimate_settings,
        data=steering_data_args,
        runtime_args=RUNTIME_ARGS,
    shell:
        "detoxflow steering-estimate --model {input.model} --method {wildcards.steering_method} {params.data} "
        "--settings {params.settings:q} {params.runtime_args} --out {output} > {log} 2>&1"


rule steering_fold:
    input:
        model=lambda w: model_folder(STEERING_VARIANTS[w.steering_variant]["start"]),
        directions=lambda w: steering_directions(w.steering_variant),
    output:
        directory(model_folder("{steering_variant}")),
    log:
        f"{LOGS}/steering/fold_{{steering_variant}}.log",
    benchmark:
        f"{BENCH}/steering/fold_{{steering_variant}}.tsv"
    wildcard_constraints:
        steering_variant="|".join(re.escape(n) for n in STEERING_VARIANTS) or "^$",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=32000,
        runtime=30,
    params:
        variant=lambda w: as_json(STEERING_VARIANTS[w.steering_variant]),
        settings=as_json({"iti_c": pick(STEERING["iti_c"], "top_k")}),
        dtype=config["model"]["dtype"],
        trust="--trust-remote-code" if config["model"]["trust_remote_code"] else "",
    shell:
        "detoxflow steering-fold --model {input.model} --directions {input.directions} "
        "--variant {params.variant:q} --settings {params.settings:q} --dtype {params.dtype} {params.trust} "
        "--out {output} > {log} 2>&1"
