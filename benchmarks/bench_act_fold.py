"""Folded AcT maps vs the hooked maps on tiny random GPT-2 / Llama models (random maps, strength 0.8).

    PYTHONPATH=src:tests .venv/bin/python benchmarks/bench_act_fold.py

Prints max |logit difference| (folded - hooked), the intervention's own effect (hooked - base) and
the largest logit, per family, intervention-point preset and dtype.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import make_tiny_model  # noqa: E402
from test_act_fold import _logits, _random_maps  # noqa: E402
from transformers import GPT2Tokenizer  # noqa: E402

from detoxflow.methods.act.hooks import transport_hooks  # noqa: E402
from detoxflow.methods.act.pipeline import fold_maps  # noqa: E402
from detoxflow.methods.act.points import select_points  # noqa: E402
from detoxflow.models import load_model, load_tokenizer  # noqa: E402


def main(shared: str = "/work/shared/data") -> None:
    tok = GPT2Tokenizer.from_pretrained(f"{shared}/gpt2_tokenizer")
    tok.pad_token = tok.eos_token
    root = Path(tempfile.mkdtemp())
    for family, preset in (("gpt2", "gpt2"), ("llama", "llama"), ("llama", "llama_norms")):
        folder = root / family
        if not folder.exists():
            make_tiny_model(family, folder, tok)
        for dtype in ("float32", "bfloat16"):
            model = load_model(folder, dtype=dtype, device="cpu")
            t = load_tokenizer(folder)
            maps = _random_maps(select_points(model, preset))
            base = _logits(model, t)
            with transport_hooks(model, maps, 0.8, clip=False):
                hooked = _logits(model, t)
            folded = copy.deepcopy(model)
            fold_maps(folded, maps, 0.8)
            gap = float((_logits(folded, t) - hooked).abs().max())
            print(f"| {family} | {preset} | {dtype} | {gap:.1e} | {float((hooked - base).abs().max()):.2f} | "
                  f"{float(base.abs().max()):.2f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
