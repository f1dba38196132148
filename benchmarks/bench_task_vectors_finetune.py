"""Fine-tuning throughput (tokens/s) of the task-vector fine-tune step.

Trains a model folder on Davidson tweets (hate + offensive) from the shared data
and prints tokens/s (non-padding tokens through forward + backward + AdamW step).

    .venv/bin/python benchmarks/bench_task_vectors_finetune.py --model /tmp/tv_models/smollm2 \
        --rows 64 --batch-size 8 --max-length 64 [--lora] [--precision bf16] [--device cuda]

Without --model a random GPT-2-small-shaped model (124M) is built first.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]


def random_gpt2(out: Path, shared: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    from detoxflow.models import save_model_folder

    tok = GPT2Tokenizer.from_pretrained(str(shared / "gpt2_tokenizer"))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok)))
    return save_model_folder(model, tok, out, method="base", params={"source": "random gpt2-small"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--shared-data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from detoxflow.methods.task_vectors.finetune import FinetuneSettings, finetune

    shared = Path(args.shared_data)
    df = pd.read_csv(shared / "davidson" / "labeled_data.csv")
    texts = df[df["class"].isin([0, 1])]["tweet"].sample(args.rows, random_state=0).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = Path(args.model) if args.model else random_gpt2(tmp / "base", shared)
        settings = FinetuneSettings.from_dict({
            "lr": 1e-5, "epochs": 1, "batch_size": args.batch_size, "max_length": args.max_length,
            "precision": args.precision, "checkpoint_every": 0, "lora": {"enabled": args.lora},
        })
        t0 = time.perf_counter()
        log = finetune(model, texts, tmp / "out", tmp / "state", settings, device=args.device)
        wall = time.perf_counter() - t0
    print(json.dumps({
        "model": str(args.model or "random gpt2-small"), "rows": args.rows, "batch_size": args.batch_size,
        "max_length": args.max_length, "lora": args.lora, "precision": log["precision"], "device": log["device"],
        "threads": args.threads, "steps": log["steps"], "tokens": log["tokens_this_run"],
        "train_seconds": log["seconds_this_run"], "tokens_per_second": log["tokens_per_second"],
        "wall_seconds_incl_load_and_save": round(wall, 1),
    }, indent=2))


if __name__ == "__main__":
    sys.exit(main())
