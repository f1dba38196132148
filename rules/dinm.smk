# DINM (Wang et al., ACL 2024) on SafeEdit instances (rules/safeedit.smk makes
# results/safeedit/{train,test}.json):
#   dinm_edit_model           edits with the first dinm.model.instances train instances and keeps them
#                             -> results/models/dinm, evaluated like every other variant
#   dinm_per_instance(+report) the paper's protocol: edit with one test instance, answer its inputs,
#                             restore, next instance -> results/dinm/per_instance.{json,md}

DINM = config["dinm"]
DINM_DIR = f"{RESULTS}/dinm"


# the SafeEdit prompt and decoding settings, so the per-instance vanilla responses match the base model's
DINM_EVAL = {k: config["safeedit"][k] for k in ("n_instances", "prompt", "generation")}
DINM_PER_INSTANCE_N = DINM["per_instance"]["n_instances"] or config["safeedit"]["n_instances"]


if DINM["enabled"]:
    MODEL_VARIANTS.append("dinm")
    if DINM["per_instance"]["enabled"]:
        EXTRA_TARGETS.extend([f"{DINM_DIR}/per_instance.json", f"{DINM_DIR}/per_instance.md"])

    rule dinm_edit_model:
        input:
            model=f"{MODELS}/base",
            data=f"{RESULTS}/safeedit/train.json",
        output:
            model=directory(f"{MODELS}/dinm"),
            record=f"{DINM_DIR}/model_edits.json",
        params:
            settings=as_json(DINM),
            runtime_args=model_runtime_args(),
        log:
            f"{LOGS}/dinm/edit_model.log",
        benchmark:
            f"{BENCH}/dinm/edit_model.tsv"
        threads: 2
        resources:
            gpu=1,
            mem_mb=32000,
            runtime=120,
        conda:
            ENV
        shell:
            "detoxflow dinm-edit --model {input.model} --data {input.data} --settings {params.settings:q} "
            "{params.runtime_args} --out {output.model} --record {output.record} > {log} 2>&1"

    rule dinm_per_instance:
        input:
            model=f"{MODELS}/base",
            data=f"{RESULTS}/safeedit/test.json",
            vanilla=f"{RESULTS}/eval/base/safeedit_generations.jsonl",
        output:
            generations=f"{DINM_DIR}/per_instance/generations.jsonl",
            edits=f"{DINM_DIR}/per_instance/edits.json",
        params:
            dinm=as_json(DINM),
            evaluation=as_json(DINM_EVAL),
            n=f"--n-instances {DINM_PER_INSTANCE_N}" if DINM_PER_INSTANCE_N else "",
            vanilla=DINM["per_instance"]["vanilla"],
            runtime_args=model_runtime_args(),
        log:
            f"{LOGS}/dinm/per_instance.log",
        benchmark:
            f"{BENCH}/dinm/per_instance.tsv"
        threads: 2
        resources:
            gpu=1,
            mem_mb=32000,
            runtime=240,
        conda:
            ENV
        shell:
            "detoxflow dinm-per-instance --model {input.model} --data {input.data} --dinm {params.dinm:q} "
            "--evaluation {params.evaluation:q} {params.n} --vanilla {params.vanilla} "
            "--vanilla-cache {input.vanilla} {params.runtime_args} --out-generations {output.generations} "
            "--out-edits {output.edits} > {log} 2>&1"

    rule dinm_per_instance_report:
        input:
            generations=f"{DINM_DIR}/per_instance/generations.jsonl",
            edits=f"{DINM_DIR}/per_instance/edits.json",
            cache=f"{RESULTS}/eval/base/safeedit_scored.jsonl",
        output:
            scored=f"{DINM_DIR}/per_instance/scored.jsonl",
            json=f"{DINM_DIR}/per_instance.json",
            md=f"{DINM_DIR}/per_instance.md",
        params:
            judge=as_json(config["safeedit"]["judge"]),
        log:
            f"{LOGS}/dinm/per_instance_report.log",
        threads: 1
        resources:
            gpu=1 if config["safeedit"]["judge"]["kind"] == "classifier" else 0,
            mem_mb=8000,
            runtime=60,
        conda:
            ENV
        shell:
            "detoxflow dinm-per-instance-report --generations {input.generations} --edits {input.edits} "
            "--judge {params.judge:q} --cache {input.cache} --scored {output.scored} --json {output.json} "
            "--markdown {output.md} > {log} 2>&1"
