# detoxflow: the two commands of the README.
#   make run    set up .venv from scratch (if needed) and run the pipeline on the default config
#   make test   set up .venv from scratch (if needed), check the workflow (lint, format) and run the test suite
#               (the test suite dry-runs every preset); this is what CI runs (.ci/run)
VENV  ?= .venv
CORES ?= 2
SNAKEMAKE_ARGS ?=
BIN   := $(abspath $(VENV))/bin

$(VENV)/.detoxflow-installed: pyproject.toml workflow/scripts/setup_venv.sh
	bash workflow/scripts/setup_venv.sh $(VENV)

.PHONY: setup run run-offline test check lint format report
setup: $(VENV)/.detoxflow-installed

run: setup
	PATH=$(BIN):$$PATH snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

run-offline: setup
	PATH=$(BIN):$$PATH snakemake --cores $(CORES) --configfile workflow/presets/offline.yaml $(SNAKEMAKE_ARGS)

report: setup
	PATH=$(BIN):$$PATH snakemake --cores $(CORES) --configfile workflow/presets/offline.yaml --report results/report.html $(SNAKEMAKE_ARGS)

# snakemake --lint (exit 1 on any lint) and snakefmt --check, as the snakemake-workflows template's CI does
lint: setup
	PATH=$(BIN):$$PATH snakemake --lint --configfile workflow/presets/offline.yaml .test/config.yaml
	PATH=$(BIN):$$PATH snakefmt --check Snakefile rules/

format: setup
	PATH=$(BIN):$$PATH snakefmt Snakefile rules/

check: lint

test: setup check
	PATH=$(BIN):$$PATH python -m pytest -q
