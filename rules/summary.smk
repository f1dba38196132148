# One table, plots and report material over every evaluated run.


rule summarize:
    input:
        unpack(summary_inputs),
    output:
        csv=report(
            f"{RESULTS}/summary.csv",
            caption="../workflow/report/summary.rst",
            category="1. Summary",
            labels={"table": "all variants (csv)"},
        ),
        md=f"{RESULTS}/summary.md",
        plot=report(
            f"{RESULTS}/plots/toxicity_vs_perplexity.png",
            caption="../workflow/report/toxicity_vs_perplexity.rst",
            category="1. Summary",
            labels={"plot": "toxicity vs perplexity"},
        ),
        samples=report(
            f"{RESULTS}/samples.csv",
            caption="../workflow/report/samples.rst",
            category="2. Sample continuations",
            labels={"table": "sample continuations"},
        ),
    params:
        threshold=EVAL["toxicity"]["threshold"],
        samples=EVAL["samples_per_variant"],
    log:
        f"{LOGS}/summarize.log",
    conda:
        ENV
    shell:
        "detoxflow summarize --toxicity {input.toxicity} --scored {input.scored} "
        "--perplexity {input.perplexity} --extra {input.extra} --samples-per-variant {params.samples} "
        "--csv {output.csv} --markdown {output.md} --plot {output.plot} --samples {output.samples} "
        "> {log} 2>&1"
