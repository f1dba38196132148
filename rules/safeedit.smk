# SafeEdit (Wang et al., ACL 2024) defense metrics for every model variant, an evaluation
# stage: SafeEdit instances (hub, local copy, or the offline AdvBench stand-in) -> greedy
# responses of each model to the adversarial input and the four generalization inputs ->
# safety judge -> DS / DG / fluency in results/eval/<model>/safeedit.json, merged into the
# model's rows. The same instances feed DINM (rules/dinm.smk).

SAFEEDIT = config["safeedit"]
SAFEEDIT_DIR = f"{RESULTS}/safeedit"

# What decides a model's SafeEdit responses; DINM's per-instance protocol answers with the same.
SAFEEDIT_EVAL = pick(SAFEEDIT, "n_instances", "prompt", "generation")


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


if SAFEEDIT["enabled"]:

    register_stage("safeedit", model_metrics=[f"{EVAL}/{{model}}/safeedit.json"])


rule safeedit_data:
    input:
        unpack(safeedit_data_inputs),
    output:
        train=f"{SAFEEDIT_DIR}/train.json",
        test=f"{SAFEEDIT_DIR}/test.json",
    params:
        settings=as_json(safeedit_data_settings()),
        # the prompt and decoding settings matter only where the base model writes the unsafe answers
        evaluation=as_json(SAFEEDIT_EVAL if standin_answers_with_model() else {}),
        data_root=config["data_root"] or "",
        advbench=lambda wildcards, input: input.get("advbench", ""),
        model=lambda wildcards, input: input.get("model", ""),
        runtime_args=RUNTIME_ARGS,
    log:
        f"{LOGS}/safeedit/data.log",
    benchmark:
        f"{BENCH}/safeedit/data.tsv"
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
        model=model_folder("{model}"),
        data=f"{SAFEEDIT_DIR}/test.json",
    output:
        f"{EVAL}/{{model}}/safeedit_generations.jsonl",
    params:
        settings=as_json(SAFEEDIT_EVAL),
        runtime_args=RUNTIME_ARGS,
    log:
        f"{LOGS}/eval/{{model}}/safeedit_generate.log",
    benchmark:
        f"{BENCH}/eval/{{model}}/safeedit_generate.tsv"
    threads: EVALUATION["threads"]
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
        f"{EVAL}/{{model}}/safeedit_generations.jsonl",
    output:
        scored=f"{EVAL}/{{model}}/safeedit_scored.jsonl",
        metrics=f"{EVAL}/{{model}}/safeedit.json",
    params:
        judge=as_json(judge_settings()),
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
        "--scored {output.scored} --metrics {output.metrics} > {log} 2>&1"
