#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU and no network, run the offline default DAG in bf16
# and measure generation, perplexity, fine-tune and DINM-edit throughput of a ~1B Llama-shaped model
# against the GPU's bf16 matmul bound. Figures go to $OUT/gpu_check.json (+ the DAG's timing and
# summary); results/benchmarks/ of the DAG run holds every job's time.
#
#   OUT=/path/to/out bash benchmarks/gpu_check.sh            # on the GPU machine
#   OUT=/tmp/out bash benchmarks/gpu_check.sh --reduced      # anywhere: a tiny model and a few prompts
#
# The machine needs detoxflow's Python packages (a venv made by workflow/scripts/setup_venv.sh, or wheels
# carried there, see the device tool's notes) and the shared data beside the checkout (DETOXFLOW_SHARED_DATA
# overrides); nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/out/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
SHARED="${DETOXFLOW_SHARED_DATA:-$(cd .. && pwd)/shared/data}"
REDUCED=""
[ "${1:-}" = "--reduced" ] && REDUCED="--reduced"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

echo "[gpu_check] throughput against the matmul bound"
"$PY" benchmarks/gpu_check.py $REDUCED --shared-data "$SHARED" --out "$OUT/gpu_check.json"

echo "[gpu_check] the offline default DAG in bf16 (float32 where the device has no bf16)"
WORK="$OUT/dag"
mkdir -p "$WORK"
DTYPE=$("$PY" -c "import torch; print('bfloat16' if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 'float32')")
OVERLAY="$WORK/overlay.yaml"
{
  echo "data_root: $SHARED"
  if [ -z "$REDUCED" ]; then
    echo "model: {dtype: $DTYPE}"
  else
    # a tiny random model and a few prompts: the same DAG, in seconds, on any machine
    "$PY" - "$WORK/tiny" "$SHARED" <<'PYEOF'
import sys, torch
from transformers import GPT2Tokenizer, LlamaConfig, LlamaForCausalLM
from detoxflow.models import save_model_folder
tok = GPT2Tokenizer.from_pretrained(sys.argv[2] + "/gpt2_tokenizer"); tok.pad_token = tok.eos_token
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, tie_word_embeddings=False)
save_model_folder(LlamaForCausalLM(cfg), tok, sys.argv[1], method="base", params={})
PYEOF
    echo "model: {base: $WORK/tiny, dtype: $DTYPE}"
    echo "datasets: {rtp_prompts: {sample: 4}}"
    echo "evaluation: {generation: {k: 2, max_new_tokens: 4}, perplexity: {window: 64, stride: 32, max_tokens: 256}, preprompt_models: [base]}"
    echo "task_vectors: {max_rows: 16, finetune: {batch_size: 4, max_length: 32}}"
    echo "aura: {sentences_per_class: 8, det0: {enabled: false}, damp: {enabled: false}}"
    echo "dinm: {steps: 2, model: {instances: 1}, per_instance: {n_instances: 2}}"
    echo "safeedit: {n_instances: 2, prompt: {chat_template: false}, generation: {max_new_tokens: 4}, data: {standin: {n_train: 1, n_test: 2}}}"
  fi
} > "$OVERLAY"
START=$(date +%s)
"$PY" -m snakemake --cores "$(nproc)" --resources gpu=1 --directory "$WORK" \
  --configfile workflow/presets/offline.yaml "$OVERLAY" > "$WORK/snakemake.log" 2>&1 || {
    tail -50 "$WORK/snakemake.log"; exit 1; }
END=$(date +%s)
"$PY" - "$OUT/gpu_check.json" "$WORK" "$((END - START))" <<'PYEOF'
import json, sys
from pathlib import Path
out, work, seconds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
figures = json.loads(out.read_text())
jobs = {str(p.relative_to(work / "results/benchmarks")): float(p.read_text().splitlines()[1].split("\t")[0])
        for p in (work / "results/benchmarks").rglob("*.tsv")}
figures["dag"] = {"wall_seconds": seconds, "jobs": len(jobs), "job_seconds": jobs,
                  "summary_rows": len((work / "results/summary.csv").read_text().splitlines()) - 1}
out.write_text(json.dumps(figures, indent=2) + "\n")
print(f"[gpu_check] DAG: {seconds} s wall, {len(jobs)} timed jobs; figures in {out}")
PYEOF
