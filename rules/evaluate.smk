# One evaluation for every model folder under results/models, whatever made it.
# A "run" is (model, prompting): prompting is `plain` or a named pre-prompt.

wildcard_constraints:
    model="[A-Za-z0-9_.\-]+",
    prompting="[A-Za-z0-9_]+",


rule generate_continuations:
    input:
        model=f"{MODELS}/{{model}}",
        prompts=recipe_path(EVAL["prompts"]),
    output:
        f"{RESULTS}/eval/{{model}}/{{prompting}}/generations.jsonl",
    params:
        generation=lambda w: as_json(dict(EVAL["generation"], preprompt=preprompt_text(w.prompting))),
        batch_size=EVAL["batch_size"],
        runtime_args=model_runtime_args(),
    log:
        f"{LOGS}/eval/{{model}}/{{prompting}}/generate.log",
    benchmark:
        f"{BENCH}/eval/{{model}}/{{prompting}}/generate.tsv"
    threads: EVAL["threads"]
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    conda:
        ENV
    shell:
        "detoxflow generate --model {input.model} --prompts {input.prompts} "
        "--settings {params.generation:q} --batch-size {params.batch_size} {params.runtime_args} "
        "--out {output} > {log} 2>&1"


rule score_toxicity:
    input:
        f"{RESULTS}/eval/{{model}}/{{prompting}}/generations.jsonl",
    output:
        scored=f"{RESULTS}/eval/{{model}}/{{prompting}}/toxicity.jsonl",
        metrics=f"{RESULTS}/eval/{{model}}/{{prompting}}/toxicity.json",
    params:
        toxicity=as_json(EVAL["toxicity"]),
    log:
        f"{LOGS}/eval/{{model}}/{{prompting}}/score_toxicity.log",
    benchmark:
        f"{BENCH}/eval/{{model}}/{{prompting}}/score_toxicity.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        ENV
    shell:
        "detoxflow score-toxicity --generations {input} --settings {params.toxicity:q} "
        "--out {output.scored} --metrics {output.metrics} > {log} 2>&1"


rule perplexity:
    input:
        model=f"{MODELS}/{{model}}",
        text=recipe_path(EVAL["perplexity_data"]),
    output:
        f"{RESULTS}/eval/{{model}}/perplexity.json",
    params:
        settings=as_json(EVAL["perplexity"]),
        runtime_args=model_runtime_args(),
    log:
        f"{LOGS}/eval/{{model}}/perplexity.log",
    benchmark:
        f"{BENCH}/eval/{{model}}/perplexity.tsv"
    threads: EVAL["threads"]
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    conda:
        ENV
    shell:
        "detoxflow perplexity --model {input.model} --text {input.text} --settings {params.settings:q} "
        "{params.runtime_args} --out {output} > {log} 2>&1"
