# detoxflow: one DAG from a base model to a table comparing detoxification methods.
#
#   snakemake --cores 2                                  # default config (hub data)
#   snakemake --cores 2 --configfile workflow/presets/offline.yaml
#   snakemake --profile workflow/profiles/slurm          # on a SLURM cluster
#   snakemake --report results/report.html               # after a run
#
# data recipes -> methods (each writes Hugging Face model folders) -> one evaluation of every
# folder -> one summary. Each stage is one rule file that registers its model variants, extra
# per-model metrics and targets with register_stage() (rules/common.smk); all logic lives in
# the detoxflow package and rules are thin calls to its CLI. See docs/ARCHITECTURE.md.

from snakemake.utils import min_version

min_version("8.0")


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/data.smk"
include: "rules/evaluate.smk"
include: "rules/safeedit.smk"
include: "rules/task_vectors.smk"
include: "rules/aura.smk"
include: "rules/dinm.smk"
include: "rules/act.smk"
include: "rules/steering.smk"
include: "rules/summary.smk"
include: "rules/capability.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        SUMMARY.values(),
        STAGES.targets(),
