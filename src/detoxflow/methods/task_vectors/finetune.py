"""Fine-tune a causal LM on one part of the toxic set, resumable after a kill.

Plain causal-LM loss (or its negation, the gradient-ascent baseline), AdamW,
linear warm-up then linear decay (or constant), gradient accumulation,
gradient clipping, mixed precision where the device supports it, and optional
LoRA adapters (merged back into the weights before saving, so the task vector
is always taken between two full models).

Resuming: every ``checkpoint_every`` optimizer steps the trainable weights,
optimizer, scheduler, grad-scaler and RNG states and the step counter are
written atomically to ``state_dir`` (a folder outside the job's declared output,
so the workflow engine does not delete it when a job fails). The data order is
a pure function of (seed, epoch), so the step counter is the data position. A
rerun with the same settings continues from the last checkpoint and yields the
same final weights as an uninterrupted run; a rerun with different settings
discards the stale state. The state folder is removed once the model is saved.

Runs on one CPU or GPU as a plain process, or on several GPUs when started with
``accelerate launch`` (data-parallel; each process takes its share of every
global batch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ...errors import DetoxflowError
from ...io import atomic_path, read_json, write_json
from ...models import load_tokenizer, save_model_folder
from ...runtime import resolve_device, resolve_dtype, seed_everything
from .toxic_set import texts_digest

log = logging.getLogger(__name__)

STATE_VERSION = 1
CHECKPOINT = "checkpoint"
TRAIN_LOG = "training.json"


@dataclasses.dataclass
class LoraSettings:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | None = None  # None: peft's default for the architecture


@dataclasses.dataclass
class FinetuneSettings:
    lr: float = 1e-5
    epochs: int = 5
    batch_size: int = 16          # sequences per micro-batch and process
    grad_accum: int = 1           # micro-batches per optimizer step
    max_length: int = 128         # tokens per sequence (longer ones are truncated)
    warmup_ratio: float = 0.0     # share of the optimizer steps spent warming up linearly
    schedule: str = "linear"      # linear (decay to 0) | constant (after warm-up)
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 42
    precision: str = "auto"       # auto | fp32 | bf16 | fp16 (mixed precision)
    dtype: str = "float32"        # dtype of the trained weights
    checkpoint_every: int = 50    # optimizer steps between resumable checkpoints (0: never)
    lora: LoraSettings = dataclasses.field(default_factory=LoraSettings)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "FinetuneSettings":
        data = dict(data or {})
        # keys that belong to the workflow (resources, launch), not to training
        for key in ("accelerate", "threads", "mem_mb", "runtime"):
            data.pop(key, None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DetoxflowError(
                f"task_vectors.finetune: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        lora = data.pop("lora", None) or {}
        lora_known = {f.name for f in dataclasses.fields(LoraSettings)}
        bad = sorted(set(lora) - lora_known)
        if bad:
            raise DetoxflowError(f"task_vectors.finetune.lora: unknown key(s) {', '.join(bad)}")
        settings = cls(**data, lora=LoraSettings(**lora))
        settings.check()
        return settings

    def check(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "max_length": self.max_length}
        for key, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise DetoxflowError(f"task_vectors.finetune.{key} must be an integer >= 1, got {value!r}")
        if not self.lr > 0:
            raise DetoxflowError(f"task_vectors.finetune.lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise DetoxflowError(f"task_vectors.finetune.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.schedule not in ("linear", "constant"):
            raise DetoxflowError(f"task_vectors.finetune.schedule must be linear or constant, got {self.schedule!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise DetoxflowError(
                f"task_vectors.finetune.precision must be auto, fp32, bf16 or fp16, got {self.precision!r}"
            )
        if self.checkpoint_every < 0:
            raise DetoxflowError("task_vectors.finetune.checkpoint_every must be >= 0")

    def identity(self) -> dict:
        """Everything that changes the trained weights (not how often we checkpoint)."""
        d = dataclasses.asdict(self)
        d.pop("checkpoint_every")
        return d


class Interrupted(RuntimeError):
    """Raised by the test hook ``stop_after_steps`` to simulate a killed job."""


# ---------------------------------------------------------------------------
# data order and schedule: pure functions of the settings


def tokenize(texts: list[str], tokenizer, max_length: int) -> list[list[int]]:
    seqs = []
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
        if ids:
            seqs.append(list(ids))
    return seqs


def collate(seqs: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence; padding is masked out of attention and loss."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention[i, : len(s)] = 1
    labels = input_ids.masked_fill(attention == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def epoch_groups(n_rows: int, epoch: int, seed: int, global_batch: int, grad_accum: int) -> list[list[list[int]]]:
    """Optimizer steps of one epoch: each a list of global micro-batches of row indices."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_rows, generator=gen).tolist()
    micro = [order[i:i + global_batch] for i in range(0, n_rows, global_batch)]
    return [micro[i:i + grad_accum] for i in range(0, len(micro), grad_accum)]


def steps_per_epoch(n_rows: int, global_batch: int, grad_accum: int) -> int:
    return math.ceil(math.ceil(n_rows / global_batch) / grad_accum)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base lr before optimizer step ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    return max(0.0, (total - step) / max(1, total - warmup))


def resolve_precision(precision: str, device: torch.device) -> str:
    """Accelerate's mixed-precision mode (no | bf16 | fp16) that the device supports.

    GPUs: auto -> bf16 where supported, else fp16. CPU: auto -> full precision;
    bf16 only when asked; fp16 falls back to full precision.
    """
    if precision == "fp32":
        return "no"
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if precision == "auto":
            return "bf16" if bf16_ok else "fp16"
        if precision == "bf16" and not bf16_ok:
            log.warning("bf16 not supported by this GPU; using fp16 mixed precision")
            return "fp16"
        return precision
    if precision == "fp16":
        log.warning("fp16 mixed precision needs a GPU; training in full precision on %s", device)
        return "no"
    return "no" if precision == "auto" else precision


# ---------------------------------------------------------------------------
# checkpoint state


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _trainable_state(model) -> dict[str, torch.Tensor]:
    # named_parameters() lists a tied parameter once
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def fingerprint(base_dir: Path, texts: list[str], settings: FinetuneSettings, objective: str, world: int) -> str:
    files = sorted(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns)
        for p in base_dir.iterdir()
        if p.suffix in (".safetensors", ".json")
    )
    blob = json.dumps({
        "version": STATE_VERSION, "base": [str(base_dir.resolve()), files], "texts": texts_digest(texts),
        "settings": settings.identity(), "objective": objective, "world": world,
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _checkpoint_dir(state_dir: Path) -> Path | None:
    """The last complete checkpoint (a crash between the two renames leaves ``.old``)."""
    for name in (CHECKPOINT, CHECKPOINT + ".old"):
        path = state_dir / name
        if (path / "state.json").is_file():
            return path
    return None


def save_checkpoint(
    state_dir: Path, step: int, model, optimizer, scheduler, accelerator, fp: str, history: list[dict]
) -> None:
    """Write the resumable state atomically: a temporary folder renamed into place."""
    tmp = state_dir / f".{CHECKPOINT}.tmp"
    final, old = state_dir / CHECKPOINT, state_dir / (CHECKPOINT + ".old")
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        from safetensors.torch import save_file

        save_file(_trainable_state(accelerator.unwrap_model(model)), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        extra = {"scheduler": scheduler.state_dict()}
        if accelerator.scaler is not None:
            extra["scaler"] = accelerator.scaler.state_dict()
        torch.save(extra, tmp / "scheduler.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # state.json last: its presence marks a complete checkpoint
        write_json(tmp / "state.json", {"step": step, "fingerprint": fp, "world": accelerator.num_processes,
                                         "history": history})
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    log.info("checkpoint at step %d written to %s", step, final)


def load_checkpoint(state_dir: Path, fp: str, model, optimizer, scheduler, accelerator) -> tuple[int, list[dict]]:
    """Restore the last checkpoint if it belongs to this run; return (step to continue from, loss history)."""
    ckpt = _checkpoint_dir(state_dir)
    if ckpt is None:
        return 0, []
    state = read_json(ckpt / "state.json")
    if state.get("fingerprint") != fp:
        log.warning("discarding stale checkpoint in %s (settings, data or base model changed)", state_dir)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(state_dir, ignore_errors=True)
        accelerator.wait_for_everyone()
        return 0, []
    from safetensors.torch import load_file

    weights = load_file(str(ckpt / "trainable.safetensors"))
    target = accelerator.unwrap_model(model)
    missing, unexpected = target.load_state_dict(weights, strict=False)
    trainable = {n for n, p in target.named_parameters() if p.requires_grad}
    if unexpected or trainable - set(weights):
        raise DetoxflowError(
            f"checkpoint in {ckpt} does not match the model (unexpected {list(unexpected)[:3]}, "
            f"missing {sorted(trainable - set(weights))[:3]}); delete {state_dir} to start afresh"
        )
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True))
    extra = torch.load(ckpt / "scheduler.pt", map_location="cpu", weights_only=True)
    scheduler.load_state_dict(extra["scheduler"])
    if accelerator.scaler is not None and "scaler" in extra:
        accelerator.scaler.load_state_dict(extra["scaler"])
    _set_rng_state(torch.load(ckpt / f"rng{accelerator.process_index}.pt", map_location="cpu", weights_only=True))
    log.info("resuming from the checkpoint at step %d in %s", state["step"], ckpt)
    return int(state["step"]), list(state.get("history", []))


# ---------------------------------------------------------------------------
# training


def _make_accelerator(device: str, precision: str):
    from accelerate import Accelerator

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # started by `accelerate launch` / torchrun: one process per GPU (gloo on CPUs)
        on_gpu = torch.cuda.is_available()
        mode = resolve_precision(precision, torch.device("cuda" if on_gpu else "cpu"))
        return Accelerator(mixed_precision=mode, cpu=not on_gpu), mode
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev.index)
    mode = resolve_precision(precision, dev)
    return Accelerator(mixed_precision=mode, cpu=(dev.type == "cpu")), mode


def _apply_lora(model, lora: LoraSettings):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:  # pragma: no cover - peft is a dependency
        raise DetoxflowError("task_vectors.finetune.lora.enabled needs the 'peft' package") from None
    cfg = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, cfg)
    except ValueError as exc:
        raise DetoxflowError(
            f"task_vectors.finetune.lora: {exc}. Set lora.target_modules to module names of this model "
            f"(e.g. [q_proj, v_proj] for Llama, [c_attn] for GPT-2)"
        ) from None


def finetune(
    base_dir: str | os.PathLike,
    texts: list[str],
    out_dir: str | os.PathLike,
    state_dir: str | os.PathLike,
    settings: FinetuneSettings,
    *,
    objective: str = "descent",
    device: str = "auto",
    trust_remote_code: bool = False,
    stop_after_steps: int | None = None,
) -> dict:
    """Fine-tune ``base_dir`` on ``texts``; save a full HF folder at ``out_dir``.

    ``objective`` is ``descent`` (the causal-LM loss; the task vector's source)
    or ``ascent`` (the negated loss; the gradient-ascent baseline).
    ``stop_after_steps`` raises :class:`Interrupted` after that many optimizer
    steps of this call (a test hook that simulates a killed job).
    Returns the training log (also written as ``training.json`` in the folder).
    """
    from transformers import AutoModelForCausalLM

    if objective not in ("descent", "ascent"):
        raise DetoxflowError(f"objective must be descent or ascent, got {objective!r}")
    base_dir, out_dir, state_dir = Path(base_dir), Path(out_dir), Path(state_dir)
    if not (base_dir / "config.json").is_file():
        raise DetoxflowError(f"base model folder '{base_dir}' has no config.json")
    if not texts:
        raise DetoxflowError("no training texts: the split part is empty")

    accelerator, mode = _make_accelerator(device, settings.precision)
    world, rank = accelerator.num_processes, accelerator.process_index
    tokenizer = load_tokenizer(base_dir, padding_side="right")
    seqs = tokenize(texts, tokenizer, settings.max_length)
    if not seqs:
        raise DetoxflowError("every training text tokenised to nothing")
    n_rows = len(seqs)
    global_batch = settings.batch_size * world
    per_epoch = steps_per_epoch(n_rows, global_batch, settings.grad_accum)
    total = per_epoch * settings.epochs
    warmup = int(settings.warmup_ratio * total)
    fp = fingerprint(base_dir, texts, settings, objective, world)

    seed_everything(settings.seed)
    model = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=resolve_dtype(settings.dtype), trust_remote_code=trust_remote_code
    )
    model.config.use_cache = False
    if settings.lora.enabled:
        model = _apply_lora(model, settings.lora)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, settings.schedule)
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    start, history = load_checkpoint(state_dir, fp, model, optimizer, scheduler, accelerator)
    log.info(
        "fine-tuning (%s) on %d sequences: %d epochs x %d steps, micro-batch %d x %d process(es), "
        "accumulation %d, precision %s, lora %s; starting at step %d",
        objective, n_rows, settings.epochs, per_epoch, settings.batch_size, world, settings.grad_accum,
        mode, settings.lora.enabled, start,
    )

    from tqdm.auto import tqdm

    model.train()
    sign = -1.0 if objective == "ascent" else 1.0
    tokens = 0
    t0 = time.perf_counter()
    groups_cache: dict[int, list] = {}
    bar = tqdm(total=total, initial=start, desc="fine-tune", disable=not accelerator.is_main_process)
    for step in range(start, total):
        epoch, index = divmod(step, per_epoch)
        if epoch not in groups_cache:
            groups_cache = {epoch: epoch_groups(n_rows, epoch, settings.seed, global_batch, settings.grad_accum)}
        group = groups_cache[epoch][index]
        step_loss = 0.0
        for micro in group:
            local = micro[rank::world] or micro[:1]
            batch = {k: v.to(accelerator.device) for k, v in collate([seqs[i] for i in local], tokenizer.pad_token_id).items()}
            out = model(**batch)
            loss = out.loss
            accelerator.backward(sign * loss / len(group))
            step_loss += loss.item() / len(group)
            tokens += int(batch["attention_mask"].sum())
        if settings.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        if not accelerator.optimizer_step_was_skipped:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        history.append({"step": done, "epoch": epoch, "loss": round(step_loss, 6),
                        "lr": scheduler.get_last_lr()[0]})
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}")
        if settings.checkpoint_every and done % settings.checkpoint_every == 0 and done < total:
            save_checkpoint(state_dir, done, model, optimizer, scheduler, accelerator, fp, history)
        if stop_after_steps is not None and done - start >= stop_after_steps and done < total:
            bar.close()
            raise Interrupted(f"stopped after step {done} (test hook)")
    bar.close()
    elapsed = time.perf_counter() - t0
    trained_tokens = tokens * world

    train_log = {
        "objective": objective, "rows": n_rows, "steps": total, "resumed_from_step": start,
        "settings": dataclasses.asdict(settings), "precision": mode, "processes": world,
        "device": str(accelerator.device), "tokens_this_run": trained_tokens,
        "seconds_this_run": round(elapsed, 3),
        "tokens_per_second": round(trained_tokens / elapsed, 2) if elapsed > 0 else None,
        "history": history,
    }
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        if settings.lora.enabled:
            final = final.merge_and_unload()
        final.config.use_cache = True
        with atomic_path(out_dir) as tmp:
            save_model_folder(final, tokenizer, tmp, method=f"finetune_{objective}", params={
                "rows": n_rows, "epochs": settings.epochs, "lr": settings.lr, "lora": settings.lora.enabled,
            })
            write_json(tmp / TRAIN_LOG, train_log)
        shutil.rmtree(state_dir, ignore_errors=True)
        log.info("fine-tuned model saved to %s (%.1f tokens/s)", out_dir, train_log["tokens_per_second"] or 0)
    accelerator.wait_for_everyone()
    return train_log
