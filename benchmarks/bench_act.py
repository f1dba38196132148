"""AcT and steering on SmolLM2-135M: estimation cost (incremental vs at once) and fold exactness.

    .venv/bin/python benchmarks/bench_act.py [--per-class 32 --presets llama llama_norms]

For each module preset and method: passes, tokens and seconds of the estimation (incremental:
one pass per module, each stopped after its module; at once: one pass), then the folded
checkpoint's logits against the hooked intervention on 8 held-out tweets, with and without the
reference's source-support clipping (max |logit difference|, and the intervention's own effect
for scale), in float32 and bfloat16. ITI-c and ActAdd: estimation seconds and the fold gap.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import machine, smollm2_dir  # noqa: E402

from detoxflow.activations import sample_balanced  # noqa: E402
from detoxflow.config import section_defaults  # noqa: E402
from detoxflow.methods.act.hooks import transport_hooks  # noqa: E402
from detoxflow.methods.act.incremental import estimate_maps  # noqa: E402
from detoxflow.methods.act.pipeline import fold_maps  # noqa: E402
from detoxflow.methods.act.points import select_points  # noqa: E402
from detoxflow.models import load_model, load_tokenizer  # noqa: E402


def davidson(shared: Path):
    import pandas as pd

    df = pd.read_csv(shared / "davidson" / "labeled_data.csv")
    tox = [{"text": t} for t in df[df["neither"] == 0]["tweet"].tolist()]
    clean = [{"text": t} for t in df[(df["hate_speech"] == 0) & (df["offensive_language"] == 0)]["tweet"].tolist()]
    return tox, clean


@torch.no_grad()
def logits(model, enc):
    return model(**enc).logits[enc["attention_mask"].bool()].float()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=32)
    ap.add_argument("--presets", nargs="+", default=["llama", "llama_norms"])
    ap.add_argument("--shared", default="/work/shared/data")
    args = ap.parse_args()
    folder = smollm2_dir()
    tox, clean = davidson(Path(args.shared))
    texts, labels = sample_balanced(tox, clean, args.per_class, 42, section="act")
    held, _ = sample_balanced(tox, clean, 4, 7, section="act")
    settings = dict(section_defaults("act"), quantiles=(0, 100), std_eps=1e-4)
    tok = load_tokenizer(folder, padding_side="right")
    enc = tok(held, return_tensors="pt", padding=True, truncation=True, max_length=64)
    rows = []
    print(f"# {machine()}; SmolLM2-135M; {args.per_class} + {args.per_class} Davidson tweets")
    for preset in args.presets:
        model = load_model(folder, dtype="float32", device="cpu")
        points = select_points(model, preset)
        for method in ("linear_act", "mean_act"):
            for incremental in (True, False):
                t0 = time.perf_counter()
                maps, cost = estimate_maps(model, tok, texts, labels, points, method,
                                           dict(settings, incremental=incremental))
                sec = time.perf_counter() - t0
                row = {"preset": preset, "method": method, "incremental": incremental, "modules": len(points),
                       "passes": cost["passes"], "tokens": cost["tokens"], "seconds": round(sec, 1)}
                if incremental:
                    for dtype in ("float32", "bfloat16"):
                        ref = load_model(folder, dtype=dtype, device="cpu")
                        base = logits(ref, enc)
                        folded = copy.deepcopy(ref)
                        fold_maps(folded, maps, 1.0)
                        got = logits(folded, enc)
                        for clip in (False, True):
                            with transport_hooks(ref, maps, 1.0, clip=clip):
                                want = logits(ref, enc)
                            row[f"{dtype}_gap_{'clipped' if clip else 'unclipped'}"] = float((got - want).abs().max())
                        row[f"{dtype}_effect"] = float((want - base).abs().max())
                rows.append(row)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
