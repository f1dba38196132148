"""Padding computed in one fine-tune epoch, plain order vs ``group_by_length``.

Davidson tweets (hate + offensive) from the shared data, GPT-2 tokenizer, max
length 128; prints the share of the computed (padded) tokens that is padding,
for the plain seeded order and the length-grouped one (same seed, same batches).

    PYTHONPATH=src DETOXFLOW_SHARED_DATA=../shared/data .venv/bin/python benchmarks/bench_task_vectors_padding.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from detoxflow.methods.task_vectors.finetune import epoch_groups

REPO = Path(__file__).resolve().parents[1]


def padding_share(lengths: list[int], batch: int, grad_accum: int, grouped: bool, seed: int = 42) -> float:
    steps = epoch_groups(len(lengths), 0, seed, batch, grad_accum, lengths if grouped else None)
    computed = sum(max(lengths[i] for i in micro) * len(micro) for step in steps for micro in step)
    return 1 - sum(lengths) / computed


def main() -> None:
    from transformers import GPT2TokenizerFast

    shared = Path(os.environ.get("DETOXFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))
    tok = GPT2TokenizerFast.from_pretrained(str(shared / "gpt2_tokenizer"))
    tweets = pd.read_csv(shared / "davidson" / "labeled_data.csv")
    texts = tweets.loc[tweets["class"].isin([0, 1]), "tweet"].tolist()
    for rows in (200, 4000):
        lengths = [len(ids) for ids in tok(texts[:rows], truncation=True, max_length=128)["input_ids"]]
        for batch, accum in ((16, 1), (8, 2)):
            plain, grouped = (padding_share(lengths, batch, accum, g) for g in (False, True))
            print(f"rows {rows:5d}  batch {batch:2d} x accum {accum}: padding share plain {plain:.3f}, "
                  f"group_by_length {grouped:.3f}  (computed tokens x{(1 - plain) / (1 - grouped):.2f})")


if __name__ == "__main__":
    main()
