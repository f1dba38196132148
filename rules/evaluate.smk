# The one evaluation every registered model variant goes through, whatever made it.
# A run is (model, prompting): prompting is `plain` or a named pre-prompt.


wildcard_constraints:
    model=r"[A-Za-z0-9_.\-]+",
    prompting="[A-Za-z0-9_]+",


rule generate_continuations:
    input:
        model=model_folder("{model}"),
        prompts=recipe_path(EVALUATION["prompts"]),
    output:
        f"{EVAL}/{{model}}/{{prompting}}/generations.jsonl",
    log:
        f"{LOGS}/eval/{{model}}/{{prompting}}/generate_continuations.log",
    benchmark:
        f"{BENCH}/eval/{{model}}/{{prompting}}/generate_continuations.tsv"
    conda:
        ENV
    threads: EVALUATION["threads"]
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    params:
        settings=lambda w: as_json(dict(EVALUATION["generation"], preprompt=preprompt_text(w.prompting))),
        batch_tokens=EVALUATION["batch_tokens"],
        runtime_args=RUNTIME_ARGS,
    shell:
        "detoxflow generate-continuations --model {input.model} --prompts {input.prompts} "
        "--settings {params.settings:q} --batch-tokens {params.batch_tokens} {params.runtime_args} "
        "--out {output} > {log} 2>&1"


rule score_toxicity:
    input:
        f"{EVAL}/{{model}}/{{prompting}}/generations.jsonl",
    output:
        scored=f"{EVAL}/{{model}}/{{prompting}}/toxicity.jsonl",
        metrics=f"{EVAL}/{{model}}/{{prompting}}/toxicity.json",
    log:
        f"{LOGS}/eval/{{model}}/{{prompting}}/score_toxicity.log",
    benchmark:
        f"{BENCH}/eval/{{model}}/{{prompting}}/score_toxicity.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=1 if EVALUATION["toxicity"]["scorer"] in ("detoxify", "hf-classifier") else 0,
        mem_mb=8000,
        runtime=120,
    params:
        settings=as_json(toxicity_settings()),
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
    log:
        f"{LOGS}/eval/{{model}}/perplexity.log",
    benchmark:
        f"{BENCH}/eval/{{model}}/perplexity.tsv"
    conda:
        ENV
    threads: EVALUATION["threads"]
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    params:
        settings=as_json(EVALUATION["perplexity"]),
        runtime_args=RUNTIME_ARGS,
    shell:
        "detoxflow perplexity --model {input.model} --text {input.text} --settings {params.settings:q} "
        "{params.runtime_args} --out {output} > {log} 2>&1"
