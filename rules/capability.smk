# Capability of every model variant, an evaluation stage: each model folder (whatever made it) on
# the tasks of capability.tasks through EleutherAI's lm-evaluation-harness -> capability_<task>_<metric>
# in results/eval/<model>/capability.json, merged into the model's rows; and a plot of each
# capability column against expected maximum toxicity. The task `lastword` is built here from a
# local text recipe (offline); other tasks read the hub or capability.local_copies (docs/capability.md).

CAPABILITY = config["capability"]
CAPABILITY_DIR = f"{RESULTS}/capability"
CAPABILITY_PLOT = f"{RESULTS}/plots/capability_vs_toxicity.png"

if CAPABILITY["enabled"]:

    register_stage(
        "capability",
        model_metrics=[f"{EVAL}/{{model}}/capability.json"],
        targets=[CAPABILITY_PLOT],
    )


rule capability_lastword:
    input:
        capability_text,
    output:
        f"{CAPABILITY_DIR}/lastword.jsonl",
    log:
        f"{LOGS}/capability/lastword.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=as_json(CAPABILITY["lastword"]),
    shell:
        "detoxflow capability-lastword --text {input} --settings {params.settings:q} --out {output} > {log} 2>&1"


rule capability:
    input:
        unpack(capability_inputs),
    output:
        f"{EVAL}/{{model}}/capability.json",
    log:
        f"{LOGS}/eval/{{model}}/capability.log",
    benchmark:
        f"{BENCH}/eval/{{model}}/capability.tsv"
    conda:
        ENV
    threads: EVALUATION["threads"]
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        settings=as_json(capability_settings()),
        lastword=lambda wildcards, input: input.get("lastword", ""),
        data_root=config["data_root"] or "",
        runtime_args=RUNTIME_ARGS,
    shell:
        "detoxflow capability --model {input.model} --settings {params.settings:q} --lastword={params.lastword:q} "
        "--data-root={params.data_root:q} {params.runtime_args} --out {output} > {log} 2>&1"


rule capability_plot:
    input:
        SUMMARY["csv"],
    output:
        report(
            CAPABILITY_PLOT,
            caption="../workflow/report/capability_vs_toxicity.rst",
            category="6. Capability",
            labels={"plot": "capability vs toxicity"},
        ),
    log:
        f"{LOGS}/capability/plot.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "detoxflow capability-plot --summary {input} --out {output} > {log} 2>&1"
