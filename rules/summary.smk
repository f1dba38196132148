# One table, plots and sample continuations over every evaluated run, for people
# (summary.md, plots, the report) and for programs (summary.csv).

SUMMARY = {
    "csv": f"{RESULTS}/summary.csv",
    "md": f"{RESULTS}/summary.md",
    "plot": f"{RESULTS}/plots/toxicity_vs_perplexity.png",
    "samples": f"{RESULTS}/samples.csv",
}


def summary_runs():
    """What the summary reads, named explicitly: each run's files and each model's folder and metrics."""
    runs = eval_runs()
    models = list(dict.fromkeys(m for m, _ in runs))
    return {
        "runs": [
            {
                "model": m,
                "prompting": p,
                "toxicity": f"{EVAL}/{m}/{p}/toxicity.json",
                "scored": f"{EVAL}/{m}/{p}/toxicity.jsonl",
            }
            for m, p in runs
        ],
        "models": {
            m: {
                "folder": model_folder(m),
                "metrics": [f"{EVAL}/{m}/perplexity.json", *STAGES.model_metrics(m)],
            }
            for m in models
        },
    }


def summary_inputs(wildcards):
    spec = summary_runs()
    return {
        "toxicity": [r["toxicity"] for r in spec["runs"]],
        "scored": [r["scored"] for r in spec["runs"]],
        "folders": [m["folder"] for m in spec["models"].values()],
        "metrics": [f for m in spec["models"].values() for f in m["metrics"]],
    }


rule summarize:
    input:
        unpack(summary_inputs),
    output:
        csv=report(
            SUMMARY["csv"],
            caption="../workflow/report/summary.rst",
            category="1. Summary",
            labels={"table": "all variants (csv)"},
        ),
        md=SUMMARY["md"],
        plot=report(
            SUMMARY["plot"],
            caption="../workflow/report/toxicity_vs_perplexity.rst",
            category="1. Summary",
            labels={"plot": "toxicity vs perplexity"},
        ),
        samples=report(
            SUMMARY["samples"],
            caption="../workflow/report/samples.rst",
            category="2. Sample continuations",
            labels={"table": "sample continuations"},
        ),
    params:
        spec=lambda w: as_json(summary_runs()),
        samples=EVALUATION["samples_per_variant"],
    log:
        f"{LOGS}/summarize.log",
    conda:
        ENV
    shell:
        "detoxflow summarize --spec {params.spec:q} --samples-per-variant {params.samples} "
        "--csv {output.csv} --markdown {output.md} --plot {output.plot} --samples {output.samples} "
        "> {log} 2>&1"
