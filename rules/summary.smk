# One table, plots and sample continuations over every evaluated run, for people
# (summary.md, plots, the report) and for programs (summary.csv).

SUMMARY = {
    "csv": f"{RESULTS}/summary.csv",
    "md": f"{RESULTS}/summary.md",
    "plot": f"{RESULTS}/plots/toxicity_vs_perplexity.png",
    "samples": f"{RESULTS}/samples.csv",
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
    log:
        f"{LOGS}/summarize.log",
    conda:
        ENV
    params:
        spec=lambda w: as_json(summary_runs()),
        samples=EVALUATION["samples_per_variant"],
    shell:
        "detoxflow summarize --spec {params.spec:q} --samples-per-variant {params.samples} "
        "--csv {output.csv} --markdown {output.md} --plot {output.plot} --samples {output.samples} "
        "> {log} 2>&1"
