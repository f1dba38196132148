# detoxflow: the two commands of the README.
#   make run    set up .venv from scratch (if needed) and run the pipeline on the default config
#   make test   set up .venv from scratch (if needed) and run the whole test suite
VENV  ?= .venv
CORES ?= 2
SNAKEMAKE_ARGS ?=

$(VENV)/.detoxflow-installed: pyproject.toml workflow/scripts/setup_venv.sh
	bash workflow/scripts/setup_venv.sh $(VENV)

.PHONY: setup run run-offline test lint report
setup: $(VENV)/.detoxflow-installed

run: setup
	PATH=$(abspath $(VENV))/bin:$$PATH snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

run-offline: setup
	PATH=$(abspath $(VENV))/bin:$$PATH snakemake --cores $(CORES) --configfile workflow/presets/offline.yaml $(SNAKEMAKE_ARGS)

report: setup
	PATH=$(abspath $(VENV))/bin:$$PATH snakemake --cores $(CORES) --configfile workflow/presets/offline.yaml --report results/report.html $(SNAKEMAKE_ARGS)

lint: setup
	PATH=$(abspath $(VENV))/bin:$$PATH snakemake --lint --configfile workflow/presets/offline.yaml

test: setup
	PATH=$(abspath $(VENV))/bin:$$PATH python -m pytest -q
