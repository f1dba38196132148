"""The AcT stage as steps the CLI runs: estimate maps on a start model -> one folded folder per strength."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from ...activations import sample_balanced
from ...folding import fold_affine_output
from ...io import read_jsonl, write_jsonl
from ...models import load_model, load_tokenizer, model_chain, read_metadata, save_model_folder
from ...runtime import seed_everything
from .estimators import with_strength
from .hooks import transport_hooks
from .incremental import estimate_maps, load_maps, save_maps
from .points import select_points

log = logging.getLogger(__name__)


def run_estimate(model_dir, toxic_path, nontoxic_path, method: str, settings: dict, out, sentences_out=None, *,
                 dtype="float32", device="auto", trust_remote_code=False, names=("toxic", "nontoxic"),
                 **placement) -> dict:
    cfg = settings
    seed_everything(int(cfg["seed"]))
    texts, labels = sample_balanced(read_jsonl(toxic_path), read_jsonl(nontoxic_path),
                                    int(cfg["sentences_per_class"]), int(cfg["seed"]), section="act", names=names)
    model = load_model(model_dir, dtype=dtype, device=device, trust_remote_code=trust_remote_code, **placement)
    tokenizer = load_tokenizer(model_dir, padding_side="right")
    points = select_points(model, cfg["modules"])
    t0 = time.perf_counter()
    settings_fit = dict(cfg, quantiles=cfg["linear_act"]["quantiles"], std_eps=cfg["mean_act"]["std_eps"],
                        clip_while_estimating=cfg["linear_act"]["clip_while_estimating"])
    maps, cost = estimate_maps(model, tokenizer, texts, labels, points, method, settings_fit)
    seconds = time.perf_counter() - t0
    meta = {"model": str(model_dir), "method": method, "incremental": bool(cfg["incremental"]),
            "clip_while_estimating": bool(cfg["linear_act"]["clip_while_estimating"]),
            "pooling": cfg["pooling"], "n_sentences": len(texts), "n_units": sum(m.beta.numel() for m in maps.values()),
            "seconds": round(seconds, 3), **cost}
    save_maps(out, maps, meta)
    if sentences_out is not None:
        write_jsonl(sentences_out, ({"text": t, "toxic": int(lab)} for t, lab in zip(texts, labels)))
    log.info("%s: %d modules, %d passes, %d tokens in %.1f s -> %s", method, len(maps), cost["passes"],
             cost["tokens"], seconds, out)
    return meta


@torch.no_grad()
def fold_maps(model, maps, strength: float) -> None:
    """Fold every map (execution order: a norm's shift goes through its readers' current weights)."""
    for name, tmap in maps.items():
        scale, shift = with_strength(tmap, strength)
        fold_affine_output(model, name, scale, shift)


@torch.no_grad()
def hooked_logits(model, tokenizer, maps, strength: float, texts: list[str]) -> dict:
    """Logits of the hooked map (with and without the reference's clipping) on ``texts``, before folding."""
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=64)
    mask = enc["attention_mask"].bool()
    out = {"enc": enc, "mask": mask}
    for clip in (False, True):
        with transport_hooks(model, maps, strength, clip=clip):
            out[clip] = model(**enc).logits[mask].float()
    return out


@torch.no_grad()
def fold_gaps(folded, reference: dict) -> dict:
    """Max |logit difference| of the folded model vs the hooked map, unclipped and clipped."""
    got = folded(**reference["enc"]).logits[reference["mask"]].float()
    return {"vs_unclipped": float((got - reference[False]).abs().max()),
            "vs_clipped": float((got - reference[True]).abs().max()),
            "logit_scale": float(got.abs().max())}


def run_fold(model_dir, maps_path, spec: dict, out, *, sentences=None, dtype="auto",
             trust_remote_code=False) -> Path:
    maps, meta = load_maps(maps_path)
    load_dtype = dtype if dtype != "auto" else read_metadata(model_dir).get("dtype", "float32")
    model = load_model(model_dir, dtype=load_dtype, device="cpu", trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(model_dir)
    reference = None
    if sentences:  # the fold check: 8 of the estimation sentences, spread over both classes
        rows = read_jsonl(sentences)
        texts = [r["text"] for r in rows][:: max(1, len(rows) // 8)][:8]
        reference = hooked_logits(model, load_tokenizer(model_dir, padding_side="right"), maps,
                                  spec["strength"], texts)
    fold_maps(model, maps, spec["strength"])
    check = None
    if reference is not None:
        check = fold_gaps(model, reference)
        log.info("fold check (max |logit diff|): %s", check)
    params = {"strength": float(spec["strength"]), "n_units": int(meta["n_units"]),
              "incremental": bool(meta["incremental"]), "sentences_per_class": int(meta["n_sentences"]) // 2}
    chain = model_chain(model_dir) + [spec["method"]]
    return save_model_folder(model, tokenizer, out, method=spec["method"], params=params,
                             extra={"chain": chain, "start": spec["start"], "fold_check": check})
