# SafeEdit (Wang et al., ACL 2024) defense metrics for every model variant:
# SafeEdit instances (hub, local copy, or the offline AdvBench stand-in) ->
# greedy responses of each model to the adversarial input and the four
# generalization inputs -> safety judge -> DS / DG / fluency in
# results/eval/{model}/safeedit.json, merged into the summary row of the model.
# The data rule also feeds DINM (rules/dinm.smk), so the rules exist whenever
# either stage is enabled.

SAFEEDIT = config["safeedit"]
SAFEEDIT_DIR = f"{RESULTS}/safeedit"


# What decides a model's SafeEdit responses (shared with the DINM per-instance protocol).
SAFEEDIT_EVAL = {k: SAFEEDIT[k] for k in ("n_instances", "prompt", "generation")}
# The stand-in reads the AdvBench recipe (and the base model when it answers as the unsafe response).
SAFEEDIT_DATA_INPUTS = {}
SAFEEDIT_NEEDED = SAFEEDIT["enabled"] or config["dinm"]["enabled"]
if SAFEEDIT_NEEDED and SAFEEDIT["data"]["source"] == "standin":
    SAFEEDIT_DATA_INPUTS["advbench"] = recipe_path(SAFEEDIT["data"]["standin"]["advbench"])
    if SAFEEDIT["data"]["standin"]["unsafe_response"] == "model":
        SAFEEDIT_DATA_INPUTS["model"] = f"{MODELS}/base"


if SAFEEDIT["enabled"]:
    EXTRA_MODEL_METRICS.append(f"{RESULTS}/eval/{{model}}/safeedit.json")


if SAFEEDIT_NEEDED:

    rule safeedit_data:
        input:
            **SAFEEDIT_DATA_INPUTS,
        output:
            train=f"{SAFEEDIT_DIR}/train.json",
            test=f"{SAFEEDIT_DIR}/test.json",
        params:
            settings=as_json(SAFEEDIT["data"]),
            evaluation=as_json(SAFEEDIT_EVAL),
            data_root=config["data_root"] or "",
            advbench=lambda wildcards, input: input.get("advbench", ""),
            model=lambda wildcards, input: input.get("model", ""),
            runtime_args=model_runtime_args(),
        log:
            f"{LOGS}/safeedit/data.log",
        threads: 1
        resources:
            mem_mb=8000,
            runtime=60,
        conda:
            ENV
        shell:
            "detoxflow safeedit-data --settings {params.settings:q} --evaluation {params.evaluation:q} "
            "--data-root={params.data_root:q} --advbench={params.advbench:q} --model={params.model:q} "
            "{params.runtime_args} --train {output.train} --test {output.test} > {log} 2>&1"

    rule safeedit_generate:
        input:
            model=f"{MODELS}/{{model}}",
            data=f"{SAFEEDIT_DIR}/test.json",
        output:
            f"{RESULTS}/eval/{{model}}/safeedit_generations.jsonl",
        params:
            settings=as_json(SAFEEDIT_EVAL),
            runtime_args=model_runtime_args(),
        wildcard_constraints:
            model="[A-Za-z0-9_.\-]+",
        log:
            f"{LOGS}/eval/{{model}}/safeedit_generate.log",
        benchmark:
            f"{BENCH}/eval/{{model}}/safeedit_generate.tsv"
        threads: EVAL["threads"]
        resources:
            gpu=1,
            mem_mb=16000,
            runtime=120,
        conda:
            ENV
        shell:
            "detoxflow safeedit-generate --model {input.model} --data {input.data} "
            "--settings {params.settings:q} {params.runtime_args} --out {output} > {log} 2>&1"

    rule safeedit_score:
        input:
            f"{RESULTS}/eval/{{model}}/safeedit_generations.jsonl",
        output:
            scored=f"{RESULTS}/eval/{{model}}/safeedit_scored.jsonl",
            metrics=f"{RESULTS}/eval/{{model}}/safeedit.json",
        params:
            judge=as_json(SAFEEDIT["judge"]),
        wildcard_constraints:
            model="[A-Za-z0-9_.\-]+",
        log:
            f"{LOGS}/eval/{{model}}/safeedit_score.log",
        benchmark:
            f"{BENCH}/eval/{{model}}/safeedit_score.tsv"
        threads: 1
        resources:
            gpu=1 if SAFEEDIT["judge"]["kind"] == "classifier" else 0,
            mem_mb=8000,
            runtime=60,
        conda:
            ENV
        shell:
            "detoxflow safeedit-score --generations {input} --judge {params.judge:q} "
            "--model-name {wildcards.model} --scored {output.scored} --metrics {output.metrics} > {log} 2>&1"
