"""Which layer each DINM locate mode picks, and the per-layer distance profiles, on a real model.

    .venv/bin/python benchmarks/measure_dinm_location.py [--model FOLDER] [--n-train 4] [--n-test 8]
        [--no-chat-template] [--device cpu]

Model: the embedded SmolLM2-135M-Instruct (materialised under benchmarks/out/) unless --model is given.
Instances: the offline SafeEdit stand-in of the default config (AdvBench, seed 42, the AdvBench target
as the unsafe response), with the default config's prompt (the DINM suffix, chat template on). Every
instance is located on the unedited model (as the per-instance protocol does). Prints, per instance,
the layer each mode picks and the top layers of the scale-free distances, the picks with
locate_min_layer 1, and the mean norm of the
response-averaged state per layer (how the residual stream grows with depth); writes the profiles to
benchmarks/out/dinm_location.json and the plot of the DAG (dinm-plots) to benchmarks/out/dinm_layer_profiles.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from common import OUT, machine, smollm2_dir  # noqa: E402

from detoxflow.data.safeedit_standin import build_standin  # noqa: E402
from detoxflow.methods.dinm import DinmEditor, DinmSettings  # noqa: E402
from detoxflow.methods.dinm.locate import locate_toxic_layer, response_means  # noqa: E402
from detoxflow.methods.dinm.plots import plot_layer_profiles  # noqa: E402
from detoxflow.models import load_model, load_tokenizer  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def top(values: list[float], k: int = 3) -> list[int]:
    return sorted(range(len(values)), key=lambda i: -values[i])[:k]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--n-train", type=int, default=4)
    ap.add_argument("--n-test", type=int, default=8)
    ap.add_argument("--no-chat-template", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shared-data", default=str(SHARED))
    args = ap.parse_args()
    folder = Path(args.model) if args.model else smollm2_dir()
    model, tok = load_model(folder, device=args.device), load_tokenizer(folder)
    rows = pd.read_csv(Path(args.shared_data) / "advbench" / "harmful_behaviors.csv").to_dict("records")
    train, test = build_standin(rows, n_train=args.n_train, n_test=args.n_test, seed=42)
    editor = DinmEditor(model, tok, DinmSettings.defaults(chat_template=not args.no_chat_template))
    n_layers = editor.n_layers
    print(f"machine: {machine()}")
    print(f"model: {folder} ({model.config.model_type}, {n_layers} layers), chat template "
          f"{not args.no_chat_template}; {len(train)} train + {len(test)} test stand-in instances")
    print(f"{'split':5} {'id':>4} | masked relative cosine reference | relative top-3 | cosine top-3")
    located, norms = [], []
    start = time.perf_counter()
    for split, records in (("train", train), ("test", test)):
        for rec in records:
            inputs = editor.inputs(rec)
            loc = locate_toxic_layer(model, tok, inputs, mode="masked")
            ref = locate_toxic_layer(model, tok, inputs, mode="reference")
            picks = {m: top(v, 1)[0] for m, v in loc.profiles.items()}
            print(f"{split:5} {rec['id']:>4} | {picks['masked']:>6} {picks['relative']:>8} {picks['cosine']:>6} "
                  f"{ref.layer:>9} | {top(loc.profiles['relative'])} | {top(loc.profiles['cosine'])}")
            located.append({"id": rec["id"], "source": split, "layer": loc.layer, "mode": "masked",
                            "profiles": {**loc.profiles, "reference": ref.distances}})
            with torch.no_grad():
                states = response_means(model, tok, inputs.prompt, inputs.safe, special_tokens=inputs.special_tokens)
            norms.append(states.norm(dim=-1))
    seconds = time.perf_counter() - start
    mean_norm = torch.stack(norms).mean(0).tolist()
    print("mean norm of the response-averaged state per layer:",
          ", ".join(f"{i}: {v:.0f}" for i, v in enumerate(mean_norm)))
    for mode, min_layer in (("masked", 0), ("relative", 0), ("cosine", 0), ("reference", 0), ("relative", 1),
                            ("cosine", 1)):
        picks = [min_layer + top(loc["profiles"][mode][min_layer:], 1)[0] for loc in located]
        counts = {layer: picks.count(layer) for layer in sorted(set(picks))}
        print(f"{mode:9} locate_min_layer {min_layer}: layers picked {counts}")
    for mode in ("relative", "cosine"):
        ratios = [loc["profiles"][mode][0] / max(loc["profiles"][mode][1:]) for loc in located]
        print(f"{mode}: layer 0 / largest of layers 1.. = {min(ratios):.2f} to {max(ratios):.2f}")
    print(f"locate (masked + reference) {seconds / len(located):.2f} s per instance")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "dinm_location.json").write_text(json.dumps({"located": located, "mean_norm": mean_norm}, indent=1))
    plot_layer_profiles([{**loc, "profiles": {k: v for k, v in loc["profiles"].items() if k != "reference"}}
                         for loc in located], OUT / "dinm_layer_profiles.png", chosen_mode="masked")


if __name__ == "__main__":
    main()
