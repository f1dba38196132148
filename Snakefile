# detoxflow: one DAG from a base model to a table comparing detoxification methods.
#
#   snakemake --cores 2                                  # default config (hub data)
#   snakemake --cores 2 --configfile workflow/presets/offline.yaml
#   snakemake --profile workflow/profiles/slurm          # on a SLURM cluster
#   snakemake --report results/report.html               # after a run
#
# Stages (one rule file each): models -> data -> methods (task_vectors, aura,
# dinm) -> evaluate -> summary. All logic lives in the detoxflow package; rules
# are thin calls to its CLI.

from snakemake.utils import min_version

min_version("8.0")


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/data.smk"
include: "rules/task_vectors.smk"
include: "rules/aura.smk"
include: "rules/dinm.smk"
include: "rules/safeedit.smk"
include: "rules/evaluate.smk"
include: "rules/summary.smk"


report: "workflow/report/workflow.rst"


rule all:
    input:
        summary_outputs(),
    default_target: True
