# Activation transport (Rodriguez et al., ICLR 2025; apple/ml-act): Linear-AcT / Mean-AcT maps
# estimated (module by module) on a start model -> one folded model folder per method and
# strength (linear_act, mean_act, <method>_s<s>), plus compositions <start>--<method> on other
# stages' model folders (act.compose). docs/act.md.
import re
import sys

from detoxflow.methods.act.variants import estimations, variant_specs as act_variant_specs

ACT = config["act"]
ACT_DIR = f"{RESULTS}/act"
try:
    _act_specs = act_variant_specs(ACT)
except DetoxflowError as exc:
    raise WorkflowError(str(exc)) from None
# a composition on a model of a disabled stage is skipped (as evaluation.preprompt_models does)
# a start is a variant of an enabled stage included before, or one of this stage's own (from base)
_act_known = set(STAGES.variants()) | {v["name"] for v in _act_specs if v["start"] == "base"}
_act_skipped = [v["name"] for v in _act_specs if v["start"] not in _act_known]
if ACT["enabled"] and _act_skipped:
    print(
        f"act.compose: skipping {', '.join(_act_skipped)} (start model not produced by an enabled stage)",
        file=sys.stderr,
    )
ACT_VARIANTS = {v["name"]: v for v in _act_specs if v["name"] not in _act_skipped}
ACT_STARTS = sorted({v["start"] for v in ACT_VARIANTS.values()}) or ["base"]

if ACT["enabled"]:

    register_stage("act", variants=ACT_VARIANTS)


rule act_estimate:
    input:
        model=lambda w: model_folder(w.act_start),
        toxic=lambda w: recipe_path(ACT["toxic"]),
        nontoxic=lambda w: recipe_path(ACT["nontoxic"]),
    output:
        maps=f"{ACT_DIR}/{{act_start}}/{{act_method}}/maps.safetensors",
        sentences=f"{ACT_DIR}/{{act_start}}/{{act_method}}/sentences.jsonl",
    log:
        f"{LOGS}/act/estimate_{{act_start}}_{{act_method}}.log",
    benchmark:
        f"{BENCH}/act/estimate_{{act_start}}_{{act_method}}.tsv"
    wildcard_constraints:
        act_start="|".join(re.escape(s) for s in ACT_STARTS),
        act_method="linear_act|mean_act",
    conda:
        ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
    params:
        settings=as_json(
            pick(
                ACT,
                "sentences_per_class",
                "seed",
                "max_tokens",
                "batch_size",
                "modules",
                "pooling",
                "pool_special_tokens",
                "incremental",
                "linear_act",
                "mean_act",
            )
        ),
        runtime_args=RUNTIME_ARGS,
    shell:
        "detoxflow act-estimate --model {input.model} --toxic {input.toxic} --nontoxic {input.nontoxic} "
        "--method {wildcards.act_method} --settings {params.settings:q} {params.runtime_args} "
        "--out {output.maps} --sentences {output.sentences} > {log} 2>&1"


rule act_fold:
    input:
        model=lambda w: model_folder(ACT_VARIANTS[w.act_variant]["start"]),
        maps=lambda w: act_maps(w.act_variant),
        sentences=lambda w: act_maps(w.act_variant).replace("maps.safetensors", "sentences.jsonl"),
    output:
        directory(model_folder("{act_variant}")),
    log:
        f"{LOGS}/act/fold_{{act_variant}}.log",
    benchmark:
        f"{BENCH}/act/fold_{{act_variant}}.tsv"
    wildcard_constraints:
        act_variant="|".join(re.escape(n) for n in ACT_VARIANTS) or "^$",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=32000,
        runtime=30,
    params:
        variant=lambda w: as_json(ACT_VARIANTS[w.act_variant]),
        dtype=config["model"]["dtype"],
        trust="--trust-remote-code" if config["model"]["trust_remote_code"] else "",
    shell:
        "detoxflow act-fold --model {input.model} --maps {input.maps} --sentences {input.sentences} "
        "--variant {params.variant:q} --dtype {params.dtype} {params.trust} --out {output} > {log} 2>&1"
