# DINM (Wang et al., ACL 2024) on the SafeEdit instances of rules/safeedit.smk:
#   dinm_edit_model            edits with the first dinm.model.instances train instances and keeps
#                              them -> results/models/dinm, evaluated like every other variant
#   dinm_per_instance(_report) the paper's protocol: edit with one test instance, answer its inputs,
#                              restore, next instance -> results/dinm/per_instance.{json,md}

DINM = config["dinm"]
DINM_DIR = f"{RESULTS}/dinm"

# DinmSettings: the dinm section's editing keys plus the SafeEdit prompt it edits with
DINM_SETTINGS = dict(
    pick(
        DINM,
        "lr",
        "lr_by_family",
        "default_lr",
        "steps",
        "c_edit",
        "c_kl",
        "locate",
        "locate_min_layer",
        "layer",
        "max_length",
        "reuse_lower_layers",
    ),
    suffix=SAFEEDIT["prompt"]["suffix"],
    chat_template=SAFEEDIT["prompt"]["chat_template"],
)
DINM_PER_INSTANCE = {
    "json": f"{DINM_DIR}/per_instance.json",
    "md": f"{DINM_DIR}/per_instance.md",
}
# the per-layer distance profiles of the location (none when dinm.layer fixes the layer)
DINM_PROFILES = f"{RESULTS}/plots/dinm_layer_profiles.png"

if DINM["enabled"]:

    register_stage(
        "dinm",
        variants=["dinm"],
        targets=[
            *(DINM_PER_INSTANCE.values() if DINM["per_instance"]["enabled"] else []),
            *([DINM_PROFILES] if DINM["layer"] is None else []),
        ],
    )


rule dinm_edit_model:
    input:
        model=model_folder("base"),
        data=f"{SAFEEDIT_DIR}/train.json",
    output:
        model=directory(model_folder("dinm")),
        record=f"{DINM_DIR}/model_edits.json",
    log:
        f"{LOGS}/dinm/edit_model.log",
    benchmark:
        f"{BENCH}/dinm/edit_model.tsv"
    conda:
        ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=120,
    params:
        settings=as_json(DINM_SETTINGS),
        instances=DINM["model"]["instances"],
        mode=DINM["model"]["mode"],
        seed=DINM["model"]["seed"],
        runtime_args=RUNTIME_ARGS,
    shell:
        "detoxflow dinm-edit-model --model {input.model} --data {input.data} --settings {params.settings:q} "
        "--instances {params.instances} --mode {params.mode} --seed {params.seed} "
        "{params.runtime_args} --out {output.model} --record {output.record} > {log} 2>&1"


rule dinm_per_instance:
    input:
        model=model_folder("base"),
        data=f"{SAFEEDIT_DIR}/test.json",
        vanilla=f"{EVAL}/base/safeedit_generations.jsonl",
    output:
        generations=f"{DINM_DIR}/per_instance/generations.jsonl",
        edits=f"{DINM_DIR}/per_instance/edits.json",
    log:
        f"{LOGS}/dinm/per_instance.log",
    benchmark:
        f"{BENCH}/dinm/per_instance.tsv"
    conda:
        ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=240,
    params:
        settings=as_json(DINM_SETTINGS),
        evaluation=as_json(SAFEEDIT_EVAL),
        # null: as many test instances as the SafeEdit evaluation uses
        n=DINM["per_instance"]["n_instances"] or SAFEEDIT["n_instances"] or "all",
        vanilla=DINM["per_instance"]["vanilla"],
        runtime_args=RUNTIME_ARGS,
    shell:
        "detoxflow dinm-per-instance --model {input.model} --data {input.data} --settings {params.settings:q} "
        "--evaluation {params.evaluation:q} --n-instances {params.n} --vanilla {params.vanilla} "
        "--vanilla-cache {input.vanilla} {params.runtime_args} --out-generations {output.generations} "
        "--out-edits {output.edits} > {log} 2>&1"


rule dinm_per_instance_report:
    input:
        generations=f"{DINM_DIR}/per_instance/generations.jsonl",
        edits=f"{DINM_DIR}/per_instance/edits.json",
        cache=f"{EVAL}/base/safeedit_scored.jsonl",
    output:
        scored=f"{DINM_DIR}/per_instance/scored.jsonl",
        json=DINM_PER_INSTANCE["json"],
        md=report(
            DINM_PER_INSTANCE["md"],
            category="5. DINM",
            labels={"table": "per-instance protocol"},
        ),
    log:
        f"{LOGS}/dinm/per_instance_report.log",
    conda:
        ENV
    threads: 1
    resources:
        gpu=1 if SAFEEDIT["judge"]["kind"] == "classifier" else 0,
        mem_mb=8000,
        runtime=60,
    params:
        judge=as_json(judge_settings()),
    shell:
        "detoxflow dinm-per-instance-report --generations {input.generations} --edits {input.edits} "
        "--judge {params.judge:q} --cache {input.cache} --scored {output.scored} --json {output.json} "
        "--markdown {output.md} > {log} 2>&1"


rule dinm_layer_profiles:
    input:
        unpack(dinm_profile_inputs),
    output:
        report(
            DINM_PROFILES,
            caption="../workflow/report/dinm_layer_profiles.rst",
            category="5. DINM",
            labels={"plot": "toxic-layer location profiles"},
        ),
    log:
        f"{LOGS}/dinm/layer_profiles.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        per_instance=lambda wildcards, input: input.get("per_instance", ""),
        locate=DINM["locate"],
    shell:
        "detoxflow dinm-plots --model-edits {input.model} --per-instance-edits={params.per_instance:q} "
        "--locate {params.locate} --out {output} > {log} 2>&1"
