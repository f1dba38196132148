# Split-and-merge task-vector negation (Kim et al., COLM 2024) and the single-model
# task-vector baseline (Ilharco et al., ICLR 2023). See docs/task_vectors.md.
#
#   recipe -> tv_toxic_set -> tv_split (N parts; N = 1 is the whole set)
#          -> tv_finetune (one job per part, resumable) -> tv_merge (tv_merge_n<N>_l<lambda>,
#             tv_single_l<lambda>) / tv_ascent -> evaluation -> tv_choose_lambda, tv_vector_stats

from detoxflow.methods.task_vectors import variants as tv_variants

TV = config["task_vectors"]
TV_FT = TV["finetune"]
TV_DIR = f"{RESULTS}/task_vectors"
TV_VARIANTS = tv_variants.variants(TV)
TV_FAMILIES = tv_variants.stats_families(TV, TV_DIR)
# every variant of the branch with the evaluation files of its perplexity and plain-run toxicity
TV_POINTS = tv_variants.evaluation_points(TV_VARIANTS, EVAL)
TV_OUTPUTS = {
    "choice_json": f"{TV_DIR}/lambda_choice.json",
    "choice_md": f"{TV_DIR}/lambda_choice.md",
    "choice_plot": f"{RESULTS}/plots/task_vectors_lambda.png",
    "stats_json": f"{TV_DIR}/vector_stats.json",
    "stats_md": f"{TV_DIR}/vector_stats.md",
}

if TV["enabled"]:
    recipe_path(TV["dataset"])  # fails early, naming the missing recipe

    register_stage(
        "task_vectors",
        variants=tv_variants.model_variants(TV),
        targets=[v for k, v in TV_OUTPUTS.items() if k.startswith("choice") or (TV_FAMILIES and k.startswith("stats"))],
    )


rule tv_toxic_set:
    input:
        lambda w: recipe_path(TV["dataset"]),
    output:
        rows=f"{TV_DIR}/toxic_set.jsonl",
        info=f"{TV_DIR}/toxic_set.json",
    log:
        f"{LOGS}/task_vectors/toxic_set.log",
    conda:
        ENV
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        source=TV["dataset"],
        seed=TV["seed"],
        max_rows=TV["max_rows"] or "",
    shell:
        "detoxflow tv-toxic-set --rows {input} --source {params.source} --seed {params.seed} "
        "--max-rows {params.max_rows:q} --out {output.rows} --info {output.info} > {log} 2>&1"


rule tv_split:
    input:
        rules.tv_toxic_set.output.rows,
    output:
        directory(f"{TV_DIR}/splits/n{{n}}"),
    log:
        f"{LOGS}/task_vectors/split_n{{n}}.log",
    wildcard_constraints:
        n="[0-9]+",
    conda:
        ENV
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        seed=TV["seed"],
    shell:
        "detoxflow tv-split --rows {input} --n-splits {wildcards.n} --seed {params.seed} " "--out {output} > {log} 2>&1"


TV_FINETUNED = directory(f"{TV_DIR}/finetuned/{{objective}}_n{{n}}_part{{part}}")


rule tv_finetune:
    input:
        base=model_folder("base"),
        split=f"{TV_DIR}/splits/n{{n}}",
    output:
        protected(TV_FINETUNED) if TV["protect_finetuned"] else TV_FINETUNED,
    log:
        f"{LOGS}/task_vectors/finetune_{{objective}}_n{{n}}_part{{part}}.log",
    benchmark:
        f"{BENCH}/task_vectors/finetune_{{objective}}_n{{n}}_part{{part}}.tsv"
    wildcard_constraints:
        objective="descent|ascent",
        n="[0-9]+",
        part="[0-9]+",
    conda:
        ENV
    threads: TV_FT["threads"]
    resources:
        gpu=(TV_FT["accelerate"]["num_processes"] if TV_FT["accelerate"]["enabled"] else 1),
        mem_mb=TV_FT["mem_mb"],
        runtime=TV_FT["runtime"],
    params:
        settings=as_json(tv_variants.training_settings(TV_FT)),
        state=lambda w: f"{TV_DIR}/state/{w.objective}_n{w.n}_part{w.part}",
        launcher=tv_variants.launcher(TV_FT),
        device=config["model"]["device"],
        trust="--trust-remote-code" if config["model"]["trust_remote_code"] else "",
    shell:
        "{params.launcher} tv-finetune --base {input.base} --split-dir {input.split} --part {wildcards.part} "
        "--objective {wildcards.objective} --settings {params.settings:q} --state-dir {params.state} "
        "--device {params.device} --threads {threads} {params.trust} --out {output} > {log} 2>&1"


rule tv_merge:
    # theta_pre - lambda * mean_i(tau_i): tv_merge_n<N>_l<lambda> over the N parts, and the
    # single-model baseline tv_single_l<lambda> (the whole set fine-tuned as one part)
    input:
        base=model_folder("base"),
        finetuned=lambda w: tv_variants.finetuned_dirs(TV_DIR, "descent", tv_variants.family_splits(w.family)),
    output:
        directory(model_folder("tv_{family}_l{lam}")),
    log:
        f"{LOGS}/task_vectors/merge_{{family}}_l{{lam}}.log",
    benchmark:
        f"{BENCH}/task_vectors/merge_{{family}}_l{{lam}}.tsv"
    wildcard_constraints:
        family="single|merge_n[0-9]+",
        lam="[-+0-9.e]+",
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        method=lambda w: tv_variants.family_method(w.family),
        meta=lambda w: as_json({"n_splits": tv_variants.family_splits(w.family), "lambda": float(w.lam)}),
    shell:
        "detoxflow tv-merge --base {input.base} --finetuned {input.finetuned} --lambda {wildcards.lam} "
        "--method {params.method} --params {params.meta:q} --out {output} > {log} 2>&1"


rule tv_ascent:
    # theta_pre + 1.0 * (theta_ascent - theta_pre): the gradient-ascent model as is, written
    # with the base's tokenizer and sharding like every other variant
    input:
        base=model_folder("base"),
        finetuned=tv_variants.finetuned_dirs(TV_DIR, "ascent", 1),
    output:
        directory(model_folder("tv_ascent")),
    log:
        f"{LOGS}/task_vectors/ascent.log",
    benchmark:
        f"{BENCH}/task_vectors/ascent.tsv"
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        meta=as_json({"n_splits": 1}),
    shell:
        "detoxflow tv-merge --base {input.base} --finetuned {input.finetuned} --lambda 1.0 --add "
        "--method gradient_ascent --params {params.meta:q} --out {output} > {log} 2>&1"


rule tv_choose_lambda:
    input:
        perplexity=[p["perplexity"] for p in TV_POINTS],
        toxicity=[p["toxicity"] for p in TV_POINTS],
    output:
        json=TV_OUTPUTS["choice_json"],
        md=report(
            TV_OUTPUTS["choice_md"],
            category="3. Task vectors",
            labels={"table": "lambda choice"},
        ),
        plot=report(
            TV_OUTPUTS["choice_plot"],
            category="3. Task vectors",
            labels={"plot": "toxicity vs perplexity across lambda"},
        ),
    log:
        f"{LOGS}/task_vectors/choose_lambda.log",
    conda:
        ENV
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        points=as_json(TV_POINTS),
        settings=as_json(TV["choose_lambda"]),
    shell:
        "detoxflow tv-choose-lambda --points {params.points:q} --settings {params.settings:q} "
        "--json {output.json} --markdown {output.md} --plot {output.plot} > {log} 2>&1"


rule tv_vector_stats:
    input:
        base=model_folder("base"),
        finetuned=sorted({d for dirs in TV_FAMILIES.values() for d in dirs}),
    output:
        json=TV_OUTPUTS["stats_json"],
        md=report(
            TV_OUTPUTS["stats_md"],
            category="3. Task vectors",
            labels={"table": "task-vector norms and cosines"},
        ),
    log:
        f"{LOGS}/task_vectors/vector_stats.log",
    benchmark:
        f"{BENCH}/task_vectors/vector_stats.tsv"
    conda:
        ENV
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        families=" ".join(f"--family {name}={','.join(dirs)}" for name, dirs in TV_FAMILIES.items()),
    shell:
        "detoxflow tv-vector-stats --base {input.base} {params.families} --json {output.json} "
        "--markdown {output.md} > {log} 2>&1"
