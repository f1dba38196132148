# AurA (Suau et al., ICML 2024): pooled MLP responses over toxic / non-toxic sentences ->
# AUROC of every unit -> one folded model folder per variant (aura, aura_s<s>, det0_k<k>,
# damp_k<k>) that the evaluation picks up, plus per-layer plots.
import re

from detoxflow.methods.aura.variants import variant_specs

AURA = config["aura"]
AURA_DIR = f"{RESULTS}/aura"
try:
    AURA_VARIANTS = {v["name"]: v for v in variant_specs(AURA)}
except DetoxflowError as exc:
    raise WorkflowError(str(exc)) from None
AURA_PLOTS = {
    "auroc": f"{RESULTS}/plots/aura_auroc_per_layer.png",
    "dampened": f"{RESULTS}/plots/aura_dampened_per_layer.png",
    "csv": f"{AURA_DIR}/layer_stats.csv",
    "json": f"{AURA_DIR}/expertise_summary.json",
}

if AURA["enabled"]:

    register_stage(
        "aura",
        variants=AURA_VARIANTS,
        targets=AURA_PLOTS.values() if AURA["plots"] else [],
    )


rule aura_responses:
    input:
        model=model_folder("base"),
        toxic=lambda w: recipe_path(AURA["toxic"]),
        nontoxic=lambda w: recipe_path(AURA["nontoxic"]),
    output:
        responses=f"{AURA_DIR}/responses.safetensors",
        sentences=f"{AURA_DIR}/sentences.jsonl",
    log:
        f"{LOGS}/aura/responses.log",
    benchmark:
        f"{BENCH}/aura/responses.tsv"
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
                AURA,
                "modules",
                "pooling",
                "pool_special_tokens",
                "sentences_per_class",
                "seed",
                "max_tokens",
                "batch_size",
            )
        ),
        runtime_args=RUNTIME_ARGS,
    shell:
        "detoxflow aura-responses --model {input.model} --toxic {input.toxic} --nontoxic {input.nontoxic} "
        "--settings {params.settings:q} {params.runtime_args} --out {output.responses} "
        "--sentences {output.sentences} > {log} 2>&1"


rule aura_expertise:
    input:
        f"{AURA_DIR}/responses.safetensors",
    output:
        f"{AURA_DIR}/expertise.safetensors",
    log:
        f"{LOGS}/aura/expertise.log",
    benchmark:
        f"{BENCH}/aura/expertise.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "detoxflow aura-expertise --responses {input} --out {output} > {log} 2>&1"


rule aura_fold:
    input:
        model=model_folder("base"),
        expertise=f"{AURA_DIR}/expertise.safetensors",
    output:
        directory(model_folder("{aura_variant}")),
    log:
        f"{LOGS}/aura/fold_{{aura_variant}}.log",
    benchmark:
        f"{BENCH}/aura/fold_{{aura_variant}}.tsv"
    wildcard_constraints:
        aura_variant="|".join(re.escape(n) for n in AURA_VARIANTS),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=32000,
        runtime=30,
    params:
        variant=lambda w: as_json(AURA_VARIANTS[w.aura_variant]),
        dtype=config["model"]["dtype"],
        trust="--trust-remote-code" if config["model"]["trust_remote_code"] else "",
    shell:
        "detoxflow aura-fold --model {input.model} --expertise {input.expertise} "
        "--variant {params.variant:q} --dtype {params.dtype} {params.trust} --out {output} > {log} 2>&1"


rule aura_plots:
    input:
        f"{AURA_DIR}/expertise.safetensors",
    output:
        auroc=report(
            AURA_PLOTS["auroc"],
            category="4. AurA",
            labels={"plot": "AUROC and alpha per layer"},
        ),
        dampened=report(
            AURA_PLOTS["dampened"],
            category="4. AurA",
            labels={"plot": "dampened units per layer"},
        ),
        csv=AURA_PLOTS["csv"],
        json=AURA_PLOTS["json"],
    log:
        f"{LOGS}/aura/plots.log",
    conda:
        ENV
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        variants=as_json(list(AURA_VARIANTS.values())),
    shell:
        "detoxflow aura-plots --expertise {input} --variants {params.variants:q} "
        "--auroc-plot {output.auroc} --dampened-plot {output.dampened} "
        "--stats-csv {output.csv} --stats-json {output.json} > {log} 2>&1"
