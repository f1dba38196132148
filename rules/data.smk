# Dataset recipes -> results/data/<recipe>.jsonl (one JSON object a row: `text` + source columns).


rule dataset:
    output:
        f"{RESULTS}/data/{{recipe}}.jsonl",
    log:
        f"{LOGS}/data/{{recipe}}.log",
    benchmark:
        f"{BENCH}/data/{{recipe}}.tsv"
    wildcard_constraints:
        recipe="|".join(config["datasets"]) or "__none__",
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        recipe=lambda w: as_json(config["datasets"][w.recipe]),
        data_root=f"--data-root {shlex.quote(config['data_root'])}" if config["data_root"] else "",
    shell:
        "detoxflow dataset --name {wildcards.recipe} --recipe {params.recipe:q} "
        "{params.data_root} --out {output} > {log} 2>&1"
