# The one evaluation every registered model variant goes through, whatever made it.
# A run is (model, prompting): prompting is `plain` or a named pre-prompt.

EVALUATION = config["evaluation"]


wildcard_constraints:
    model=r"[A-Za-z0-9_.\-]+",
    prompting="[A-Za-z0-9_]+",


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


rule generate_continuations:
    input:
        model=model_folder("{model}"),
        prompts=recipe_path(EVALUATION["prompts"]),
    output:
        f"{EVAL}/{{model}}/{{prompting}}/generations.jsonl",
    params:
        settings=lambda w: as_json(
            dict(EVALUATION["generation"], preprompt=preprompt_text(w.prompting))
        ),
        batch_size=EVALUATION["batch_size"],
        runtime_args=RUNTIME_ARGS,
    log:
        f"{LOGS}/eval/{{model}}/{{prompting}}/generate_continuations.log",
    benchmark:
        f"{BENCH}/eval/{{model}}/{{prompting}}/generate_continuations.tsv"
    threads: EVALUATION["threads"]
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    conda:
        ENV
    shell:
        "detoxflow generate-continuations --model {input.model} --prompts {input.prompts} "
        "--settings {params.settings:q} --batch-size {params.batch_size} {params.runtime_args} "
        "--out {output} > {log} 2>&1"


rule score_toxicity:
    input:
        f"{EVAL}/{{model}}/{{prompting}}/generations.jsonl",
    output:
        scored=f"{EVAL}/{{model}}/{{prompting}}/toxicity.jsonl",
        metrics=f"{EVAL}/{{model}}/{{prompting}}/toxicity.json",
    params:
        settings=as_json(toxicity_settings()),
    log:
        f"{LOGS}/eval/{{model}}/{{prompting}}/score_toxicity.log",
    benchmark:
        f"{BENCH}/eval/{{model}}/{{prompting}}/score_toxicity.tsv"
    threads: 1
    resources:
        gpu=1 if EVALUATION["toxicity"]["scorer"] in ("detoxify", "hf-classifier") else 0,
        mem_mb=8000,
        runtime=120,
    conda:
        ENV
    shell:
        "detoxflow score-toxicity --generations {input} --settings {params.settings:q} "
        "--model-name {wildcards.model} --prompting {wildcards.prompting} "
        "--out {output.scored} --metrics {output.metrics} > {log} 2>&1"


rule perplexity:
    input:
        model=model_folder("{model}"),
        text=recipe_path(EVALUATION["perplexity_data"]),
    output:
        f"{EVAL}/{{model}}/perplexity.json",
    params:
        settings=as_json(EVALUATION["perplexity"]),
        runtime_args=RUNTIME_ARGS,
    log:
        f"{LOGS}/eval/{{model}}/perplexity.log",
    benchmark:
        f"{BENCH}/eval/{{model}}/perplexity.tsv"
    threads: EVALUATION["threads"]
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    conda:
        ENV
    shell:
        "detoxflow perplexity --model {input.model} --text {input.text} --settings {params.settings:q} "
        "{params.runtime_args} --out {output} > {log} 2>&1"
