# SafeEdit (Wang et al., ACL 2024) defense metrics for every model variant, an evaluation
# stage: SafeEdit instances (hub, local copy, or the offline AdvBench stand-in) -> greedy
# responses of each model to the adversarial input and the four generalization inputs ->
# safety judge -> DS / DG / fluency in results/eval/<model>/safeedit.json, merged into the
# model's rows. The same instances feed DINM (rules/dinm.smk).

if SAFEEDIT["enabled"]:

    register_stage("safeedit", model_metrics=[f"{EVAL}/{{model}}/safeedit.json"])


rule safeedit_data:
    input:
        unpack(safeedit_data_inputs),
    output:
        train=f"{SAFEEDIT_DIR}/train.json",
        test=f"{SAFEEDIT_DIR}/test.json",
    log:
        f"{LOGS}/safeedit/data.log",
    benchmark:
        f"{BENCH}/safeedit/data.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        settings=as_json(safeedit_data_settings()),
        # the prompt and decoding settings matter only where the base model writes the unsafe answers
        evaluation=as_json(SAFEEDIT_EVAL if standin_answers_with_model() else {}),
        data_root=config["data_root"] or "",
        advbench=lambda wildcards, input: input.get("advbench", ""),
        model=lambda wildcards, input: input.get("model", ""),
        runtime_args=RUNTIME_ARGS,
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
    log:
        f"{LOGS}/eval/{{model}}/safeedit_generate.log",
    benchmark:
        f"{BENCH}/eval/{{model}}/safeedit_generate.tsv"
    conda:
        ENV
    threads: EVALUATION["threads"]
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    params:
        settings=as_json(SAFEEDIT_EVAL),
        runtime_args=RUNTIME_ARGS,
    shell:
        "detoxflow safeedit-generate --model {input.model} --data {input.data} "
        "--settings {params.settings:q} {params.runtime_args} --out {output} > {log} 2>&1"


rule safeedit_score:
    input:
        f"{EVAL}/{{model}}/safeedit_generations.jsonl",
    output:
        scored=f"{EVAL}/{{model}}/safeedit_scored.jsonl",
        metrics=f"{EVAL}/{{model}}/safeedit.json",
    log:
        f"{LOGS}/eval/{{model}}/safeedit_score.log",
    benchmark:
        f"{BENCH}/eval/{{model}}/safeedit_score.tsv"
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
        "detoxflow safeedit-score --generations {input} --judge {params.judge:q} "
        "--scored {output.scored} --metrics {output.metrics} > {log} 2>&1"
