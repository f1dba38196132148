# Split-and-merge task-vector negation (Kim et al., COLM 2024) and the single-model
# task-vector baseline (Ilharco et al., ICLR 2023). See docs/task_vectors.md.
#
#   recipe -> tv_toxic_set -> tv_split (N parts; N = 1 is the whole set)
#          -> tv_finetune (one job per part, resumable) -> tv_merge / tv_single / tv_ascent
#          -> evaluation -> tv_choose_lambda (Ilharco's rule, toxicity matching, plot)

from detoxflow.methods.task_vectors import variants as tv_variants

TV = config["task_vectors"]
TV_FT = TV["finetune"]
TV_DIR = f"{RESULTS}/task_vectors"
TV_VARIANTS = tv_variants.variants(TV)

TV_FAMILIES = tv_variants.stats_families(TV, TV_DIR)
TV_STATS = {"json": f"{TV_DIR}/vector_stats.json", "md": f"{TV_DIR}/vector_stats.md"}

TV_CHOICE = {
    "json": f"{TV_DIR}/lambda_choice.json",
    "md": f"{TV_DIR}/lambda_choice.md",
    "plot": f"{RESULTS}/plots/task_vectors_lambda.png",
}

if TV["enabled"]:
    recipe_path(TV["dataset"])  # fails early, naming the missing recipe
    MODEL_VARIANTS.extend(m for m in tv_variants.model_variants(TV) if m not in MODEL_VARIANTS)
    EXTRA_TARGETS.extend(TV_CHOICE.values())
    if TV_FAMILIES:
        EXTRA_TARGETS.extend(TV_STATS.values())


rule tv_toxic_set:
    input:
        lambda w: recipe_path(TV["dataset"]),
    output:
        rows=f"{TV_DIR}/toxic_set.jsonl",
        info=f"{TV_DIR}/toxic_set.json",
    params:
        source=TV["dataset"],
        seed=TV["seed"],
        max_rows=TV["max_rows"] or "",
    log:
        f"{LOGS}/task_vectors/toxic_set.log",
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "detoxflow tv-toxic-set --rows {input} --source {params.source} --seed {params.seed} "
        "--max-rows {params.max_rows:q} --out {output.rows} --info {output.info} > {log} 2>&1"


rule tv_split:
    input:
        rules.tv_toxic_set.output.rows,
    output:
        directory(f"{TV_DIR}/splits/n{{n}}"),
    wildcard_constraints:
        n="[0-9]+",
    params:
        seed=TV["seed"],
    log:
        f"{LOGS}/task_vectors/split_n{{n}}.log",
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "detoxflow tv-split --rows {input} --n-splits {wildcards.n} --seed {params.seed} "
        "--out {output} > {log} 2>&1"


_tv_ft_out = directory(f"{TV_DIR}/finetuned/{{objective}}_n{{n}}_part{{part}}")


rule tv_finetune:
    input:
        base=f"{MODELS}/base",
        split=f"{TV_DIR}/splits/n{{n}}",
    output:
        protected(_tv_ft_out) if TV["protect_finetuned"] else _tv_ft_out,
    wildcard_constraints:
        objective="descent|ascent",
        n="[0-9]+",
        part="[0-9]+",
    params:
        settings=as_json(tv_variants.training_settings(TV_FT)),
        state=lambda w: f"{TV_DIR}/state/{w.objective}_n{w.n}_part{w.part}",
        launcher=tv_variants.launcher(TV_FT),
        device=config["model"]["device"],
        trust="--trust-remote-code" if config["model"]["trust_remote_code"] else "",
    log:
        f"{LOGS}/task_vectors/finetune_{{objective}}_n{{n}}_part{{part}}.log",
    benchmark:
        f"{BENCH}/task_vectors/finetune_{{objective}}_n{{n}}_part{{part}}.tsv"
    threads: TV_FT["threads"]
    resources:
        gpu=TV_FT["accelerate"]["num_processes"] if TV_FT["accelerate"]["enabled"] else 1,
        mem_mb=TV_FT["mem_mb"],
        runtime=TV_FT["runtime"],
    conda:
        ENV
    shell:
        "{params.launcher} tv-finetune --base {input.base} --split-dir {input.split} --part {wildcards.part} "
        "--objective {wildcards.objective} --settings {params.settings:q} --state-dir {params.state} "
        "--device {params.device} --threads {threads} {params.trust} --out {output} > {log} 2>&1"


rule tv_merge:
    input:
        base=f"{MODELS}/base",
        finetuned=lambda w: tv_variants.finetuned_dirs(TV_DIR, "descent", w.n),
    output:
        directory(f"{MODELS}/tv_merge_n{{n}}_l{{lam}}"),
    wildcard_constraints:
        n="[0-9]+",
        lam="[-+0-9.e]+",
    params:
        meta=lambda w: as_json({"n_splits": int(w.n), "lambda": float(w.lam)}),
    log:
        f"{LOGS}/task_vectors/merge_n{{n}}_l{{lam}}.log",
    benchmark:
        f"{BENCH}/task_vectors/merge_n{{n}}_l{{lam}}.tsv"
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        ENV
    shell:
        "detoxflow tv-merge --base {input.base} --finetuned {input.finetuned} --lambda {wildcards.lam} "
        "--method task_vector_merge --params {params.meta:q} --out {output} > {log} 2>&1"


rule tv_single:
    input:
        base=f"{MODELS}/base",
        finetuned=tv_variants.finetuned_dirs(TV_DIR, "descent", 1),
    output:
        directory(f"{MODELS}/tv_single_l{{lam}}"),
    wildcard_constraints:
        lam="[-+0-9.e]+",
    params:
        meta=lambda w: as_json({"n_splits": 1, "lambda": float(w.lam)}),
    log:
        f"{LOGS}/task_vectors/single_l{{lam}}.log",
    benchmark:
        f"{BENCH}/task_vectors/single_l{{lam}}.tsv"
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        ENV
    shell:
        "detoxflow tv-merge --base {input.base} --finetuned {input.finetuned} --lambda {wildcards.lam} "
        "--method task_vector --params {params.meta:q} --out {output} > {log} 2>&1"


rule tv_ascent:
    input:
        base=f"{MODELS}/base",
        finetuned=tv_variants.finetuned_dirs(TV_DIR, "ascent", 1),
    output:
        directory(f"{MODELS}/tv_ascent"),
    params:
        meta=as_json({"n_splits": 1}),
    log:
        f"{LOGS}/task_vectors/ascent.log",
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        ENV
    shell:
        # theta_pre + 1.0 * (theta_ascent - theta_pre): the gradient-ascent model as is,
        # written with the base's tokenizer and sharding like every other variant
        "detoxflow tv-merge --base {input.base} --finetuned {input.finetuned} --lambda 1.0 --add "
        "--method gradient_ascent --params {params.meta:q} --out {output} > {log} 2>&1"


rule tv_choose_lambda:
    input:
        perplexity=[f"{RESULTS}/eval/{v['model']}/perplexity.json" for v in TV_VARIANTS],
        toxicity=[f"{RESULTS}/eval/{v['model']}/plain/toxicity.json" for v in TV_VARIANTS],
    output:
        json=TV_CHOICE["json"],
        md=report(TV_CHOICE["md"], category="3. Task vectors", labels={"table": "lambda choice"}),
        plot=report(TV_CHOICE["plot"], category="3. Task vectors", labels={"plot": "toxicity vs perplexity across lambda"}),
    params:
        variants=as_json(TV_VARIANTS),
        settings=as_json(TV["choose_lambda"]),
        # results/eval/<model>/perplexity.json -> results/eval
        eval_dir=lambda w, input: os.path.dirname(os.path.dirname(input.perplexity[0])),
    log:
        f"{LOGS}/task_vectors/choose_lambda.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "detoxflow tv-choose-lambda --eval-dir {params.eval_dir} --variants {params.variants:q} "
        "--settings {params.settings:q} --json {output.json} --markdown {output.md} --plot {output.plot} "
        "> {log} 2>&1"


rule tv_vector_stats:
    input:
        base=f"{MODELS}/base",
        finetuned=sorted({d for dirs in TV_FAMILIES.values() for d in dirs}),
    output:
        json=TV_STATS["json"],
        md=report(TV_STATS["md"], category="3. Task vectors", labels={"table": "task-vector norms and cosines"}),
    params:
        families=" ".join(f"--family {name}={','.join(dirs)}" for name, dirs in TV_FAMILIES.items()),
    log:
        f"{LOGS}/task_vectors/vector_stats.log",
    benchmark:
        f"{BENCH}/task_vectors/vector_stats.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "detoxflow tv-vector-stats --base {input.base} {params.families} --json {output.json} "
        "--markdown {output.md} > {log} 2>&1"
