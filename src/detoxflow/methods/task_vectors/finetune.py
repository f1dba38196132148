"""Fine-tune a causal LM on one part of the toxic set, resumable after a kill.

Plain causal-LM loss (or its negation, the gradient-ascent baseline), AdamW,
linear warm-up then linear decay (or constant), gradient accumulation,
gradient clipping, mixed precision where the device supports it, and optional
LoRA adapters (merged back into the weights before saving, so the task vector
is always taken between two full models).

Precision: ``auto`` is resolved before training, from the device and the
model family, to the precision the reference code trains in (GPT-2 in fp32;
other families, e.g. Phi and Llama, in bf16 on GPUs that have it, fp16 on GPUs
that do not; fp32 on CPU). The resolved value, not ``auto``, is part of the
resume fingerprint and of the saved folder's ``detoxflow.json``.

Resuming: every ``checkpoint_every`` optimizer steps the trainable weights,
optimizer, scheduler, grad-scaler and RNG states and the step counter are
written atomically to ``state_dir`` (a folder outside the job's declared output,
so the workflow engine does not delete it when a job fails). The data order is
a pure function of (seed, epoch) (and of the sequence lengths with
``group_by_length``), so the step counter is the data position. A rerun with
the same settings continues from the last checkpoint and yields the same final
weights as an uninterrupted run; a checkpoint written by a run with other
settings, data, base model, precision or number of processes is refused with
the keys that differ. The state folder is removed once the model is saved.

One process at a time: the state folder holds a lock file (pid, host) that a
second fine-tune of the same part refuses to share; a lock left by a process
that has ended is taken over.

Runs on one CPU or GPU as a plain process, or on several GPUs when started with
``accelerate launch``: data-parallel (each process takes its share of every
global batch), or sharded (FSDP, DeepSpeed ZeRO), where the checkpoint is
accelerate's own sharded state and the final weights are gathered before saving.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import math
import os
import secrets
import shutil
import socket
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

STATE_VERSION = 2
CHECKPOINT = "checkpoint"
TRAIN_LOG = "training.json"
LOCK_FILE = "lock"
# accelerate's mixed-precision mode for each concrete precision
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
# families the reference code fine-tunes in full fp32 on GPUs (the others in bf16)
FP32_FAMILIES = frozenset({"gpt2"})


@dataclasses.dataclass
class LoraSettings:
    enabled: bool
    r: int
    alpha: int
    dropout: float
    target_modules: list[str] | None  # None: peft's default for the architecture


@dataclasses.dataclass
class FinetuneSettings:
    """The training keys of ``task_vectors.finetune``; the config schema holds their defaults."""

    lr: float
    epochs: int
    batch_size: int               # sequences per micro-batch and process
    grad_accum: int               # micro-batches per optimizer step
    max_length: int               # tokens per sequence (longer ones are truncated)
    warmup_ratio: float           # share of the optimizer steps spent warming up linearly
    schedule: str                 # linear (decay to 0) | constant (after warm-up)
    weight_decay: float
    max_grad_norm: float | None
    seed: int
    precision: str                # auto | fp32 | bf16 | fp16 (mixed precision)
    dtype: str                    # dtype of the trained weights
    group_by_length: bool         # batches of similar length, shuffled by megabatch (TRL/transformers)
    checkpoint_every: int         # optimizer steps between resumable checkpoints (0: never)
    lora: LoraSettings

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "FinetuneSettings":
        """``data`` (part of ``task_vectors.finetune``) with the schema's defaults for the missing keys."""
        from ...config import section_defaults

        defaults = section_defaults("task_vectors")["finetune"]
        given = dict(data or {})
        data = {**defaults, **given, "lora": {**defaults["lora"], **(given.get("lora") or {})}}
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
        if not isinstance(self.group_by_length, bool):
            raise DetoxflowError(
                f"task_vectors.finetune.group_by_length must be true or false, got {self.group_by_length!r}"
            )

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


def length_grouped_order(lengths: list[int], step_rows: int, generator: torch.Generator) -> list[int]:
    """A random order in which neighbouring rows have similar lengths.

    The scheme of transformers' ``LengthGroupedSampler`` (what TRL's SFTTrainer
    uses with ``group_by_length: true``): a random permutation is cut into
    megabatches of ``mult * step_rows`` rows, ``mult = min(n // (4 * step_rows),
    50)`` (at least 1); each megabatch is sorted by length, longest first; the
    longest row of all is swapped to the front, so the largest batch (the
    memory peak) comes first. Batches are then consecutive slices, so each holds
    rows of similar length (less padding) while megabatches keep the order random.
    """
    n = len(lengths)
    mult = max(1, min(n // (4 * step_rows), 50))
    size = mult * step_rows
    perm = torch.randperm(n, generator=generator).tolist()
    blocks = [sorted(perm[i:i + size], key=lambda j: lengths[j], reverse=True) for i in range(0, n, size)]
    longest = max(range(len(blocks)), key=lambda b: lengths[blocks[b][0]])
    blocks[0][0], blocks[longest][0] = blocks[longest][0], blocks[0][0]
    return [j for block in blocks for j in block]


def epoch_groups(
    n_rows: int, epoch: int, seed: int, global_batch: int, grad_accum: int, lengths: list[int] | None = None
) -> list[list[list[int]]]:
    """Optimizer steps of one epoch: each a list of global micro-batches of row indices.

    A pure function of its arguments, so a resumed run sees the same order.
    With ``lengths`` (``group_by_length``) micro-batches hold rows of similar length.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if lengths is None:
        order = torch.randperm(n_rows, generator=gen).tolist()
    else:
        if len(lengths) != n_rows:
            raise ValueError(f"{len(lengths)} lengths for {n_rows} rows")
        order = length_grouped_order(lengths, global_batch * grad_accum, gen)
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


def resolve_precision(
    precision: str, device: torch.device, model_type: str | None = None, *, bf16_supported: bool | None = None
) -> str:
    """The concrete training precision, fp32 | bf16 | fp16, for this device and model family.

    ``auto`` follows the reference code: GPT-2 in fp32; other families (Phi,
    Llama, ...) in bf16 on GPUs that have it, else fp16 (mixed precision with
    loss scaling); fp32 on CPU. An explicit value is kept where the device can
    run it: bf16 on a GPU without bf16 becomes fp16, fp16 on CPU becomes fp32
    (both with a warning). ``bf16_supported`` defaults to what the GPU reports.
    """
    if precision not in ("auto", *MIXED_PRECISION):
        raise DetoxflowError(f"task_vectors.finetune.precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if precision == "fp32":
        return "fp32"
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported
        if precision == "auto":
            if model_type in FP32_FAMILIES:
                return "fp32"
            return "bf16" if bf16_ok else "fp16"
        if precision == "bf16" and not bf16_ok:
            log.warning("bf16 not supported by this GPU; using fp16 mixed precision")
            return "fp16"
        return precision
    if precision == "fp16":
        log.warning("fp16 mixed precision needs a GPU; training in fp32 on %s", device)
        return "fp32"
    return "fp32" if precision == "auto" else precision


def model_family(base_dir: Path) -> str | None:
    """``model_type`` of the base folder's config.json (gpt2, llama, phi, ...)."""
    try:
        return json.loads((base_dir / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as exc:
        raise DetoxflowError(f"{base_dir / 'config.json'}: cannot read the model config ({exc})") from None


# ---------------------------------------------------------------------------
# one process per state folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _read_holder(path: Path) -> dict:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


class StateLock:
    """Exclusive use of a state folder: a lock file holding the holder's pid and host.

    Taken with ``flock`` on ``<state_dir>/lock``: the kernel (or the NFS lock
    manager) releases it when the holder dies, even by SIGKILL, so a lock file
    nobody holds is stale and is taken over with a log line. On file systems
    without ``flock`` (e.g. Lustre mounted without it) the file is created with
    ``O_EXCL`` instead and a lock whose pid no longer runs on this host is
    taken over. Released (the file removed) by :meth:`release`, which the
    fine-tune calls on exit and on exceptions.
    """

    def __init__(self, state_dir: str | os.PathLike):
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> "StateLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _me(self) -> str:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S")})

    def _busy(self, holder: dict) -> DetoxflowError:
        who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        if holder.get("since"):
            who += f" (since {holder['since']})"
        return DetoxflowError(
            f"state folder '{self.state_dir}' is in use by {who}: another fine-tune of this part is running; "
            f"wait for it or stop it (if no such process runs, delete {self.path})"
        )

    def _is_current(self, fd: int) -> bool:
        """Whether ``fd`` is still the file at ``self.path`` (not removed by a releasing holder)."""
        try:
            cur = os.stat(self.path)
        except FileNotFoundError:
            return False
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (cur.st_dev, cur.st_ino)

    def _write(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, self._me().encode(), 0)
        os.fsync(fd)

    def acquire(self) -> "StateLock":
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                created = True
            except FileExistsError:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                created = False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(self.path)
                os.close(fd)
                raise self._busy(holder) from None
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    os.close(fd)
                    raise
                log.info("%s: no flock on this file system (%s); locking with O_EXCL", self.path, exc.strerror)
                if created:  # the exclusive creation is the lock
                    self._write(fd)
                    self._fd = fd
                    return self
                os.close(fd)
                return self._acquire_exclusive()
            if not self._is_current(fd):  # its holder removed it between our open and flock
                os.close(fd)
                continue
            previous = _read_holder(self.path)
            if previous:
                log.warning("taking over the lock in %s left by pid %s on host %s, which no longer holds it",
                            self.state_dir, previous.get("pid", "?"), previous.get("host", "?"))
            self._write(fd)
            self._fd = fd
            return self
        raise DetoxflowError(f"could not lock {self.path}: it kept being replaced")

    def _acquire_exclusive(self) -> "StateLock":
        """Fallback without flock: create the file with O_EXCL; take over a dead local holder's file."""
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                holder = _read_holder(self.path)
                pid = holder.get("pid")
                if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or _pid_alive(pid):
                    raise self._busy(holder) from None
                self._remove_stale(holder)
                continue
            self._write(fd)
            self._fd = fd
            return self
        raise DetoxflowError(f"could not lock {self.path}: it kept being replaced")

    def _remove_stale(self, holder: dict) -> None:
        """Move the stale file aside atomically; if another process took it over meanwhile, put theirs back."""
        aside = self.path.with_name(f"{LOCK_FILE}.stale.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = _read_holder(aside)
        if moved != holder:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            os.unlink(aside)
            raise self._busy(moved)
        os.unlink(aside)
        log.warning("taking over the lock in %s left by pid %s on host %s, which no longer runs",
                    self.state_dir, holder.get("pid"), holder.get("host"))

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if self._is_current(self._fd):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None


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


def fingerprint(
    base_dir: Path, texts: list[str], settings: FinetuneSettings, objective: str, world: int, precision: str
) -> dict:
    """What a checkpoint must share with the run that resumes it (``precision``: the resolved one)."""
    files = sorted(
        [p.name, p.stat().st_size, p.stat().st_mtime_ns]
        for p in base_dir.iterdir()
        if p.suffix in (".safetensors", ".json")
    )
    identity = settings.identity()
    identity["precision"] = precision
    return {
        "format": STATE_VERSION, "base_model": str(base_dir.resolve()), "base_files": files,
        "texts": texts_digest(texts), "objective": objective, "processes": world, "settings": identity,
    }


def _flat(fp: dict) -> dict:
    """Fingerprint keys one level deep: settings.lr -> lr, settings.lora.r -> lora.r."""
    out = {}
    for key, value in fp.items():
        if key != "settings":
            out[key] = value
            continue
        for skey, svalue in value.items():
            if isinstance(svalue, dict):
                out.update({f"{skey}.{k}": v for k, v in svalue.items()})
            else:
                out[skey] = svalue
    return out


def fingerprint_differences(stored, current: dict) -> list[str]:
    """The keys in which a checkpoint's fingerprint differs from this run's, with both values where short."""
    if not isinstance(stored, dict):
        return ["format (a checkpoint of an older detoxflow)"]
    a, b = _flat(stored), _flat(current)
    diffs = []
    for key in list(b) + [k for k in a if k not in b]:
        if a.get(key) == b.get(key):
            continue
        values = f" (checkpoint {a.get(key)!r}, this run {b.get(key)!r})"
        diffs.append(key + (values if len(values) < 80 else ""))
    return diffs


def _checkpoint_dir(state_dir: Path) -> Path | None:
    """The last complete checkpoint (a crash between the two renames leaves ``.old``)."""
    for name in (CHECKPOINT, CHECKPOINT + ".old"):
        path = state_dir / name
        if (path / "state.json").is_file():
            return path
    return None


def accelerate_owns_state(accelerator) -> bool:
    """Whether weights and optimizer are sharded across processes (FSDP, DeepSpeed).

    Then no process holds them in full: checkpoints are accelerate's own
    ``save_state`` folders and the final weights are gathered before saving.
    """
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def save_checkpoint(
    state_dir: Path, step: int, model, optimizer, scheduler, accelerator, fp: dict, history: list[dict],
    run_id: str = "",
) -> None:
    """Write the resumable state atomically: a temporary folder renamed into place.

    The temporary folder's name is unique to the run (``run_id``), so a
    process that still writes into a state folder never shares it with another.
    """
    tmp = state_dir / f".{CHECKPOINT}.{run_id or secrets.token_hex(6)}.tmp"
    final, old = state_dir / CHECKPOINT, state_dir / (CHECKPOINT + ".old")
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng{accelerator.process_index}.pt")
    if accelerate_owns_state(accelerator):
        accelerator.save_state(str(tmp))  # every process writes its shard
    elif accelerator.is_main_process:
        from safetensors.torch import save_file

        save_file(_trainable_state(accelerator.unwrap_model(model)), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if accelerator.is_main_process:
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


def check_checkpoint(state_dir: Path, fp: dict) -> tuple[Path, dict] | None:
    """The last checkpoint and its state.json, or None; refused if another run wrote it.

    Another run: other settings, data, base model, resolved precision or number
    of processes. The error names the keys that differ and the state folder.
    """
    ckpt = _checkpoint_dir(state_dir)
    if ckpt is None:
        return None
    state = read_json(ckpt / "state.json")
    diffs = fingerprint_differences(state.get("fingerprint"), fp)
    if diffs:
        raise DetoxflowError(
            f"state folder '{state_dir}' holds a checkpoint of another run, which differs in: {'; '.join(diffs)}. "
            f"Resuming it would mix two trainings: delete '{state_dir}' to start afresh, "
            f"or rerun with the settings (and device) it was written with"
        )
    return ckpt, state


def load_checkpoint(state_dir: Path, fp: dict, model, optimizer, scheduler, accelerator) -> tuple[int, list[dict]]:
    """Restore the last checkpoint (see :func:`check_checkpoint`); return (step to continue from, loss history)."""
    found = check_checkpoint(state_dir, fp)
    if found is None:
        return 0, []
    ckpt, state = found
    if accelerate_owns_state(accelerator):
        accelerator.load_state(str(ckpt))
    else:
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


def training_device(device: str) -> torch.device:
    """The device this process trains on (one GPU per process under ``accelerate launch``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return resolve_device(device)


def _make_accelerator(dev: torch.device, precision: str):
    from accelerate import Accelerator

    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev.index)
    # started by `accelerate launch` / torchrun: one process per GPU (gloo on CPUs)
    return Accelerator(mixed_precision=MIXED_PRECISION[precision], cpu=(dev.type == "cpu"))


def _from_main(accelerator, value):
    """The main process's ``value``, on every process."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _lock_state(accelerator, state_dir: Path) -> tuple[StateLock | None, str]:
    """Take the state folder's lock on the main process (every process fails if it is held).

    Returns the lock and a run id shared by all processes (the checkpoint's
    temporary folder name). Temporary folders left by killed runs are removed.
    """
    lock, error = None, None
    run_id = f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"
    if accelerator.is_main_process:
        try:
            lock = StateLock(state_dir).acquire()
        except DetoxflowError as exc:
            error = str(exc)
        else:
            for orphan in state_dir.glob(f".{CHECKPOINT}.*.tmp"):
                shutil.rmtree(orphan, ignore_errors=True)
    error, run_id = _from_main(accelerator, (error, run_id))
    if error:
        raise DetoxflowError(error)
    return lock, run_id


def configure_sharding(accelerator, settings: FinetuneSettings) -> None:
    """Check and complete an FSDP / DeepSpeed setup before ``prepare`` (nothing to do otherwise).

    - FSDP version 1 is refused: it needs the optimizer built after wrapping;
      FSDP2 (``fsdp_version: 2``) takes model and optimizer together.
    - DeepSpeed: the loop marks the accumulation boundary itself and divides
      the loss by the micro-batches of the step, so DeepSpeed's own
      accumulation must be 1; the micro-batch and the clipping come from the
      settings (``auto`` is filled in, a contradicting value refused); ZeRO-3
      must gather the weights so that the model can be saved.

    Reasoned from accelerate's code; not run here (no GPU, no deepspeed package).
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise DetoxflowError(
            "FSDP version 1 is not supported by the fine-tune (it needs the optimizer built after wrapping): "
            "set fsdp_version: 2 in the accelerate config file (task_vectors.finetune.accelerate.config_file)"
        )
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    cfg = accelerator.state.deepspeed_plugin.deepspeed_config
    wanted = {"train_micro_batch_size_per_gpu": settings.batch_size, "gradient_accumulation_steps": 1,
              "gradient_clipping": float(settings.max_grad_norm or 0.0)}
    for key, value in wanted.items():
        have = cfg.get(key, "auto")
        if have == "auto":
            cfg[key] = value
        elif float(have) != float(value):
            raise DetoxflowError(
                f"DeepSpeed config {key} is {have!r} but the fine-tune needs {value!r} "
                f"(from task_vectors.finetune batch_size / grad_accum / max_grad_norm): set it to \"auto\""
            )
    zero = cfg.get("zero_optimization", {})
    key = "stage3_gather_16bit_weights_on_model_save"
    if zero.get("stage") == 3:
        if zero.get(key, "auto") == "auto":
            zero[key] = True
        elif zero[key] is not True:
            raise DetoxflowError(
                f"DeepSpeed config zero_optimization.{key} must be true to save the model under ZeRO-3: set "
                f"zero3_save_16bit_model: true in the accelerate config file (or {key}: true in the DeepSpeed JSON)"
            )


def _ndim(p: torch.Tensor) -> int:
    """Dimensions of a parameter, also when ZeRO-3 has partitioned it (``ds_shape``)."""
    return len(getattr(p, "ds_shape", p.shape))


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


def _load_model(base_dir: Path, settings: FinetuneSettings, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=resolve_dtype(settings.dtype), trust_remote_code=trust_remote_code
    )
    model.config.use_cache = False
    if settings.lora.enabled:
        model = _apply_lora(model, settings.lora)
    return model


@contextlib.contextmanager
def _plain_loading():
    """Load a model in full although ZeRO-3's partitioned loading is on in this process.

    Under DeepSpeed ZeRO-3 accelerate registers its config with transformers, and
    ``from_pretrained`` then partitions the model across processes (a collective);
    the main process's CPU copy for saving must be an ordinary model.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    config = ref() if ref is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if config is not None:
            hf_deepspeed.set_hf_deepspeed_config(config)


def _load_full_state(model, state: dict[str, torch.Tensor]) -> None:
    """Load a gathered state dict; a key may be absent only if a tied alias of it is present."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    groups: dict[int, set[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), set()).add(name)
    tied = {name: names for names in groups.values() for name in names}
    truly_missing = [k for k in missing if not (tied.get(k, set()) - set(missing))]
    if unexpected or truly_missing:
        raise DetoxflowError(
            f"the gathered weights do not fit the model (missing {truly_missing[:3]}, unexpected {unexpected[:3]})"
        )


def _model_to_save(accelerator, model, base_dir: Path, settings: FinetuneSettings, trust_remote_code: bool):
    """The trained model in full, on the main process (None elsewhere); LoRA merged into the weights.

    Data-parallel: the main process's own copy. Sharded (FSDP, ZeRO-3): every
    process takes part in gathering the weights, which the main process loads
    into a fresh CPU copy of the model (a second copy in host memory).
    """
    if accelerate_owns_state(accelerator):
        state = accelerator.get_state_dict(model)  # collective
        if not accelerator.is_main_process:
            return None
        with _plain_loading():
            final = _load_model(base_dir, settings, trust_remote_code)
        _load_full_state(final, {k: v.to("cpu") for k, v in state.items()})
    elif accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
    else:
        return None
    if settings.lora.enabled:
        final = final.merge_and_unload()
    final.config.use_cache = True
    return final


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
    if objective not in ("descent", "ascent"):
        raise DetoxflowError(f"objective must be descent or ascent, got {objective!r}")
    base_dir, out_dir, state_dir = Path(base_dir), Path(out_dir), Path(state_dir)
    if not (base_dir / "config.json").is_file():
        raise DetoxflowError(f"base model folder '{base_dir}' has no config.json")
    if not texts:
        raise DetoxflowError("no training texts: the split part is empty")

    dev = training_device(device)
    precision = resolve_precision(settings.precision, dev, model_family(base_dir))
    accelerator = _make_accelerator(dev, precision)
    lock, run_id = _lock_state(accelerator, state_dir)
    try:
        return _train(base_dir, texts, out_dir, state_dir, settings, accelerator, precision, run_id,
                      objective=objective, trust_remote_code=trust_remote_code, stop_after_steps=stop_after_steps)
    finally:
        if lock is not None:
            lock.release()


def _train(
    base_dir: Path, texts: list[str], out_dir: Path, state_dir: Path, settings: FinetuneSettings, accelerator,
    precision: str, run_id: str, *, objective: str, trust_remote_code: bool, stop_after_steps: int | None,
) -> dict:
    world, rank = accelerator.num_processes, accelerator.process_index
    tokenizer = load_tokenizer(base_dir, padding_side="right")
    seqs = tokenize(texts, tokenizer, settings.max_length)
    if not seqs:
        raise DetoxflowError("every training text tokenised to nothing")
    n_rows = len(seqs)
    lengths = [len(s) for s in seqs] if settings.group_by_length else None
    global_batch = settings.batch_size * world
    per_epoch = steps_per_epoch(n_rows, global_batch, settings.grad_accum)
    total = per_epoch * settings.epochs
    warmup = int(settings.warmup_ratio * total)
    fp = fingerprint(base_dir, texts, settings, objective, world, precision)
    check_checkpoint(state_dir, fp)  # before the model is loaded: a refusal costs nothing

    seed_everything(settings.seed)
    model = _load_model(base_dir, settings, trust_remote_code)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if _ndim(p) < 2 else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, settings.schedule)
    )
    configure_sharding(accelerator, settings)
    model, optimizer = accelerator.prepare(model, optimizer)
    start, history = load_checkpoint(state_dir, fp, model, optimizer, scheduler, accelerator)
    log.info(
        "fine-tuning (%s) on %d sequences: %d epochs x %d steps, micro-batch %d x %d process(es), "
        "accumulation %d, precision %s (setting %s), group_by_length %s, lora %s; starting at step %d",
        objective, n_rows, settings.epochs, per_epoch, settings.batch_size, world, settings.grad_accum,
        precision, settings.precision, settings.group_by_length, settings.lora.enabled, start,
    )

    from tqdm.auto import tqdm

    model.train()
    sign = -1.0 if objective == "ascent" else 1.0
    tokens = padding = 0
    t0 = time.perf_counter()
    groups_cache: dict[int, list] = {}
    bar = tqdm(total=total, initial=start, desc="fine-tune", disable=not accelerator.is_main_process)
    for step in range(start, total):
        epoch, index = divmod(step, per_epoch)
        if epoch not in groups_cache:
            groups_cache = {epoch: epoch_groups(n_rows, epoch, settings.seed, global_batch, settings.grad_accum,
                                                lengths)}
        group = groups_cache[epoch][index]
        step_loss = 0.0
        for j, micro in enumerate(group):
            local = micro[rank::world] or micro[:1]
            batch = {k: v.to(accelerator.device) for k, v in collate([seqs[i] for i in local], tokenizer.pad_token_id).items()}
            # the optimizer steps after the group's last micro-batch (DeepSpeed steps inside backward)
            accelerator.sync_gradients = j == len(group) - 1
            out = model(**batch)
            loss = out.loss
            accelerator.backward(sign * loss / len(group))
            step_loss += loss.item() / len(group)
            real = int(batch["attention_mask"].sum())
            tokens += real
            padding += batch["attention_mask"].numel() - real
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
            save_checkpoint(state_dir, done, model, optimizer, scheduler, accelerator, fp, history, run_id)
        if stop_after_steps is not None and done - start >= stop_after_steps and done < total:
            bar.close()
            raise Interrupted(f"stopped after step {done} (test hook)")
    bar.close()
    elapsed = time.perf_counter() - t0
    trained_tokens = tokens * world

    train_log = {
        "objective": objective, "rows": n_rows, "steps": total, "resumed_from_step": start,
        "settings": dataclasses.asdict(settings), "precision": precision, "processes": world,
        "device": str(accelerator.device), "tokens_this_run": trained_tokens,
        "padding_tokens_this_run": padding * world,
        "seconds_this_run": round(elapsed, 3),
        "tokens_per_second": round(trained_tokens / elapsed, 2) if elapsed > 0 else None,
        "history": history,
    }
    accelerator.wait_for_everyone()
    final = _model_to_save(accelerator, model, base_dir, settings, trust_remote_code)
    if accelerator.is_main_process:
        with atomic_path(out_dir) as tmp:
            save_model_folder(final, tokenizer, tmp, method=f"finetune_{objective}", params={
                "rows": n_rows, "epochs": settings.epochs, "lr": settings.lr, "lora": settings.lora.enabled,
                "precision": precision, "group_by_length": settings.group_by_length,
            })
            write_json(tmp / TRAIN_LOG, train_log)
        # the state folder goes, lock file included; the lock's release then finds nothing to remove
        shutil.rmtree(state_dir, ignore_errors=True)
        log.info("fine-tuned model saved to %s (%.1f tokens/s)", out_dir, train_log["tokens_per_second"] or 0)
    accelerator.wait_for_everyone()
    return train_log
