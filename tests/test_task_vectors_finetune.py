"""Fine-tune step: resume after an interruption, LoRA path, gradient ascent, schedule, settings,
precision resolution, length grouping, the state folder's lock."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from detoxflow.errors import DetoxflowError
from detoxflow.methods.task_vectors import finetune as ft_module
from detoxflow.methods.task_vectors.finetune import (
    FinetuneSettings,
    Interrupted,
    StateLock,
    epoch_groups,
    finetune,
    length_grouped_order,
    lr_factor,
    resolve_precision,
)
from detoxflow.models import read_metadata

TEXTS = [
    "you are such an idiot and everybody knows it",
    "shut up, nobody cares about your stupid opinion",
    "what a pathetic loser",
    "go away you moron",
    "this is the dumbest thing I have ever read",
    "i hate people like you",
    "get lost, clown",
    "your argument is garbage and so are you",
    "only a fool would say that",
    "stop talking nonsense you fool",
    "that was a ridiculous and idiotic idea",
]


def _settings(**kw) -> FinetuneSettings:
    base = {"lr": 5e-3, "epochs": 2, "batch_size": 3, "grad_accum": 2, "max_length": 16,
            "checkpoint_every": 2, "warmup_ratio": 0.25, "precision": "fp32"}
    base.update(kw)
    return FinetuneSettings.from_dict(base)


def _weights(folder):
    return load_file(folder / "model.safetensors")


def _mean_loss(folder, texts) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    losses = []
    with torch.no_grad():
        for t in texts:
            ids = tok(t, return_tensors="pt", truncation=True, max_length=16)["input_ids"]
            losses.append(model(input_ids=ids, labels=ids).loss.item())
    return sum(losses) / len(losses)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_gpt2_dir):
    root = tmp_path_factory.mktemp("tv_ft")
    log = finetune(tiny_gpt2_dir, TEXTS, root / "full", root / "state_full", _settings())
    return root / "full", log


def test_resume_after_interruption_gives_identical_weights(tmp_path, tiny_gpt2_dir, uninterrupted):
    full, full_log = uninterrupted
    state = tmp_path / "state"
    # 11 rows, micro-batch 3, accumulation 2 -> 2 steps an epoch, 4 in all; checkpoint at step 2.
    # Stop after step 3: the rerun must redo step 3 from the checkpoint (epoch 2, new shuffle).
    with pytest.raises(Interrupted):
        finetune(tiny_gpt2_dir, TEXTS, tmp_path / "out", state, _settings(), stop_after_steps=3)
    assert (state / "checkpoint" / "state.json").is_file()
    assert json.loads((state / "checkpoint" / "state.json").read_text())["step"] == 2
    assert not (tmp_path / "out").exists()

    log = finetune(tiny_gpt2_dir, TEXTS, tmp_path / "out", state, _settings())
    assert log["resumed_from_step"] == 2 and log["steps"] == full_log["steps"] == 4
    a, b = _weights(full), _weights(tmp_path / "out")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [h["loss"] for h in log["history"]] == [h["loss"] for h in full_log["history"]]
    assert not state.exists()  # state removed once the model is saved
    # the model really changed (the task vector is not zero)
    base = _weights(tiny_gpt2_dir)
    assert max((a[k] - base[k]).abs().max().item() for k in base) > 1e-4


def test_checkpoint_of_other_settings_is_refused(tmp_path, tiny_gpt2_dir, uninterrupted):
    full, _ = uninterrupted
    state = tmp_path / "state"
    with pytest.raises(Interrupted):
        finetune(tiny_gpt2_dir, TEXTS, tmp_path / "x", state, _settings(lr=1e-2), stop_after_steps=2)
    # different lr: the checkpoint is refused, naming the key, both values and the folder; nothing is lost
    with pytest.raises(DetoxflowError, match=rf"'{state}' holds a checkpoint of another run.*lr \(checkpoint 0.01, "
                                             rf"this run 0.005\).*delete '{state}'"):
        finetune(tiny_gpt2_dir, TEXTS, tmp_path / "out", state, _settings())
    assert (state / "checkpoint" / "state.json").is_file() and not (tmp_path / "out").exists()
    # deleted as the message says: a fresh run equals the uninterrupted one
    import shutil

    shutil.rmtree(state)
    log = finetune(tiny_gpt2_dir, TEXTS, tmp_path / "out", state, _settings())
    assert log["resumed_from_step"] == 0
    a, b = _weights(full), _weights(tmp_path / "out")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_compares_the_resolved_precision(tmp_path, tiny_gpt2_dir, uninterrupted):
    full, full_log = uninterrupted
    state = tmp_path / "state"
    # auto resolves to fp32 on a CPU: the checkpoint stores fp32, not "auto"
    with pytest.raises(Interrupted):
        finetune(tiny_gpt2_dir, TEXTS, tmp_path / "out", state, _settings(precision="auto"), stop_after_steps=3)
    stored = json.loads((state / "checkpoint" / "state.json").read_text())["fingerprint"]
    assert stored["settings"]["precision"] == "fp32"
    # a run that resolves to another precision (here bf16, as a bf16 GPU would for Llama) is refused
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # one precision per process, as in a real job
    try:
        with pytest.raises(DetoxflowError, match=r"precision \(checkpoint 'fp32', this run 'bf16'\)"):
            finetune(tiny_gpt2_dir, TEXTS, tmp_path / "out", state, _settings(precision="bf16"))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    # fp16 on a CPU resolves to fp32 as well: the same training, so it resumes, and equals the fp32 run
    log = finetune(tiny_gpt2_dir, TEXTS, tmp_path / "out", state, _settings(precision="fp16"))
    assert log["resumed_from_step"] == 2 and log["precision"] == "fp32"
    a, b = _weights(full), _weights(tmp_path / "out")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_metadata(tmp_path / "out")["params"]["precision"] == "fp32"
    assert read_metadata(full)["params"]["precision"] == full_log["precision"] == "fp32"


def test_descent_lowers_and_ascent_raises_the_loss(tmp_path, tiny_gpt2_dir, uninterrupted):
    full, log = uninterrupted
    before = _mean_loss(tiny_gpt2_dir, TEXTS)
    assert _mean_loss(full, TEXTS) < before - 0.05
    assert read_metadata(full)["method"] == "finetune_descent"
    finetune(tiny_gpt2_dir, TEXTS, tmp_path / "asc", tmp_path / "s", _settings(), objective="ascent")
    assert _mean_loss(tmp_path / "asc", TEXTS) > before + 0.05
    trained = json.loads((full / "training.json").read_text())
    assert trained["steps"] == 4 and trained["tokens_this_run"] > 0


def test_lora_is_merged_into_a_plain_model_with_low_rank_updates(tmp_path, tiny_gpt2_dir):
    settings = _settings(lr=2e-2, lora={"enabled": True, "r": 2, "alpha": 4, "target_modules": ["c_attn"]})
    finetune(tiny_gpt2_dir, TEXTS, tmp_path / "lora", tmp_path / "s", settings)
    base, got = _weights(tiny_gpt2_dir), _weights(tmp_path / "lora")
    assert set(got) == set(base)  # no adapter tensors left: a plain model folder
    changed = {k for k in base if not torch.equal(base[k], got[k])}
    assert changed == {f"transformer.h.{i}.attn.c_attn.weight" for i in range(2)}
    for key in changed:
        delta = (got[key] - base[key]).double()
        assert torch.linalg.matrix_rank(delta, atol=1e-7).item() <= 2

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "lora")  # loads as a plain GPT-2


def test_lora_resume_matches(tmp_path, tiny_gpt2_dir):
    settings = _settings(lora={"enabled": True, "r": 2, "target_modules": ["c_attn"]})
    finetune(tiny_gpt2_dir, TEXTS, tmp_path / "a", tmp_path / "sa", settings)
    with pytest.raises(Interrupted):
        finetune(tiny_gpt2_dir, TEXTS, tmp_path / "b", tmp_path / "sb", settings, stop_after_steps=3)
    finetune(tiny_gpt2_dir, TEXTS, tmp_path / "b", tmp_path / "sb", settings)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_killed_process_resumes(tmp_path, tiny_gpt2_dir):
    """A real SIGKILL of the CLI mid-training, then a rerun: same weights as one clean run."""
    split = tmp_path / "split"
    split.mkdir()
    (split / "part0.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS * 3))
    settings = json.dumps({"lr": 5e-3, "epochs": 3, "batch_size": 2, "max_length": 16, "checkpoint_every": 1,
                           "precision": "fp32"})

    def cmd(out, state):
        return [sys.executable, "-m", "detoxflow", "tv-finetune", "--base", str(tiny_gpt2_dir), "--split-dir",
                str(split), "--part", "0", "--settings", settings, "--state-dir", str(state), "--device", "cpu",
                "--threads", "1", "--out", str(out)]

    subprocess.run(cmd(tmp_path / "clean", tmp_path / "s0"), check=True, capture_output=True)
    proc = subprocess.Popen(cmd(tmp_path / "killed", tmp_path / "s1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "s1" / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file() and json.loads(ckpt.read_text())["step"] >= 3:
            break
        time.sleep(0.05)
    killed = proc.poll() is None
    proc.kill()
    proc.wait()
    if not killed:
        pytest.skip("training finished before it could be killed")
    assert not (tmp_path / "killed").exists()
    subprocess.run(cmd(tmp_path / "killed", tmp_path / "s1"), check=True, capture_output=True)
    log = json.loads((tmp_path / "killed" / "training.json").read_text())
    assert log["resumed_from_step"] >= 3
    a, b = _weights(tmp_path / "clean"), _weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_schedule_and_data_order():
    # linear warm-up over 2 steps, then linear decay to 0 over the remaining 8
    factors = [lr_factor(s, 10, 2, "linear") for s in range(10)]
    assert factors[:2] == [0.5, 1.0]
    assert factors[2:] == pytest.approx([(10 - s) / 8 for s in range(2, 10)])
    assert [lr_factor(s, 10, 0, "constant") for s in (0, 9)] == [1.0, 1.0]
    # every row once an epoch; order depends on (seed, epoch) only
    g = epoch_groups(11, 0, 42, 3, 2)
    assert sorted(i for group in g for micro in group for i in micro) == list(range(11))
    assert [len(group) for group in g] == [2, 2] and [len(m) for m in g[1]] == [3, 2]
    assert g == epoch_groups(11, 0, 42, 3, 2) and g != epoch_groups(11, 1, 42, 3, 2)


# (setting, device, model family, GPU has bf16) -> concrete precision; the reference trains GPT-2 in fp32,
# Phi and Llama in bf16
PRECISION_TABLE = [
    ("auto", "cpu", "gpt2", None, "fp32"),
    ("auto", "cpu", "llama", None, "fp32"),
    ("auto", "cpu", "phi", None, "fp32"),
    ("auto", "cuda", "gpt2", True, "fp32"),
    ("auto", "cuda", "gpt2", False, "fp32"),
    ("auto", "cuda", "llama", True, "bf16"),
    ("auto", "cuda", "phi", True, "bf16"),
    ("auto", "cuda", "llama", False, "fp16"),
    ("auto", "cuda", "mistral", True, "bf16"),
    ("fp32", "cpu", "llama", None, "fp32"),
    ("fp32", "cuda", "llama", True, "fp32"),
    ("bf16", "cpu", "gpt2", None, "bf16"),
    ("bf16", "cuda", "gpt2", True, "bf16"),
    ("bf16", "cuda", "llama", False, "fp16"),
    ("fp16", "cpu", "llama", None, "fp32"),
    ("fp16", "cuda", "gpt2", True, "fp16"),
    ("fp16", "cuda", "llama", False, "fp16"),
]


@pytest.mark.parametrize("setting,device,family,bf16,expected", PRECISION_TABLE)
def test_precision_resolution_table(setting, device, family, bf16, expected):
    assert resolve_precision(setting, torch.device(device), family, bf16_supported=bf16) == expected


def test_settings_errors():
    with pytest.raises(DetoxflowError, match="precision must be"):
        resolve_precision("half", torch.device("cpu"), "gpt2")
    with pytest.raises(DetoxflowError, match="unknown key"):
        FinetuneSettings.from_dict({"learning_rate": 1e-5})
    with pytest.raises(DetoxflowError, match="batch_size"):
        FinetuneSettings.from_dict({"batch_size": 0})
    with pytest.raises(DetoxflowError, match="group_by_length must be true or false"):
        FinetuneSettings.from_dict({"group_by_length": "yes"})
    # workflow keys are accepted and ignored
    s = FinetuneSettings.from_dict({"threads": 4, "mem_mb": 10, "runtime": 5, "accelerate": {"enabled": False}})
    assert s.lr == 1e-5 and s.epochs == 5 and s.batch_size == 16 and s.max_length == 128
    assert s.group_by_length is False


def test_the_schema_owns_the_defaults():
    """The schema owns the defaults: a partial section takes them, the dataclass repeats none."""
    import dataclasses

    from detoxflow.config import section_defaults

    defaults = section_defaults("task_vectors")["finetune"]
    settings = FinetuneSettings.from_dict({"lr": 3e-4})
    assert settings.lr == 3e-4 and settings.lr != defaults["lr"]
    for f in dataclasses.fields(FinetuneSettings):
        assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, f.name
        if f.name != "lora":
            assert f.name == "lr" or getattr(settings, f.name) == defaults[f.name], f.name
    assert dataclasses.asdict(settings.lora) == defaults["lora"]


# ---------------------------------------------------------------------------
# group_by_length


def _padding(groups, lengths) -> int:
    return sum(max(lengths[i] for i in micro) * len(micro) - sum(lengths[i] for i in micro)
               for group in groups for micro in group)


def test_length_grouped_order_is_transformers_length_grouped_sampler():
    from transformers.trainer_pt_utils import get_length_grouped_indices

    gen = torch.Generator().manual_seed(3)
    lengths = torch.randint(3, 128, (517,), generator=gen).tolist()
    for rows in (16, 48, 5):
        ours = length_grouped_order(lengths, rows, torch.Generator().manual_seed(11))
        theirs = get_length_grouped_indices(lengths, rows, generator=torch.Generator().manual_seed(11))
        assert ours == theirs


def test_group_by_length_reduces_padding_and_keeps_every_row_once():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, 129, (400,), generator=gen).tolist()  # tweet-like spread of token counts
    for epoch in range(3):
        grouped = epoch_groups(400, epoch, 42, 16, 2, lengths)
        plain = epoch_groups(400, epoch, 42, 16, 2)
        rows = [i for group in grouped for micro in group for i in micro]
        assert sorted(rows) == list(range(400))  # every row once an epoch
        assert [len(g) for g in grouped] == [len(g) for g in plain]  # same steps and batch sizes
        assert _padding(grouped, lengths) < 0.3 * _padding(plain, lengths)  # measured: about 0.2
        assert grouped == epoch_groups(400, epoch, 42, 16, 2, lengths)  # a pure function: resumable
    assert epoch_groups(400, 0, 42, 16, 2, lengths) != epoch_groups(400, 1, 42, 16, 2, lengths)
    assert epoch_groups(400, 0, 42, 16, 2, lengths) != epoch_groups(400, 0, 43, 16, 2, lengths)
    # the longest row comes first (memory peak at step 1, as in transformers)
    first = epoch_groups(400, 0, 42, 16, 2, lengths)[0][0][0]
    assert lengths[first] == max(lengths)


def test_group_by_length_resumes_in_the_same_order(tmp_path, tiny_gpt2_dir):
    texts = [" ".join(TEXTS[i % len(TEXTS)].split()[: 2 + (3 * i) % 9]) for i in range(24)]
    settings = _settings(group_by_length=True, batch_size=2, grad_accum=1, epochs=2, checkpoint_every=3)
    full = finetune(tiny_gpt2_dir, texts, tmp_path / "full", tmp_path / "s0", settings)
    with pytest.raises(Interrupted):
        finetune(tiny_gpt2_dir, texts, tmp_path / "out", tmp_path / "s1", settings, stop_after_steps=17)
    log = finetune(tiny_gpt2_dir, texts, tmp_path / "out", tmp_path / "s1", settings)
    assert log["resumed_from_step"] == 15 and full["steps"] == 24
    # the same batches in the same order: the same losses step by step, the same weights
    assert [h["loss"] for h in log["history"]] == [h["loss"] for h in full["history"]]
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "out")
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = finetune(tiny_gpt2_dir, texts, tmp_path / "plain", tmp_path / "s2", _settings(
        batch_size=2, grad_accum=1, epochs=2, checkpoint_every=0))
    assert full["tokens_this_run"] == plain["tokens_this_run"]
    assert full["padding_tokens_this_run"] < plain["padding_tokens_this_run"]
    assert read_metadata(tmp_path / "full")["params"]["group_by_length"] is True


# ---------------------------------------------------------------------------
# one process per state folder

HOLD_LOCK = """
import sys, time
from detoxflow.methods.task_vectors.finetune import StateLock
StateLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def _split_dir(tmp_path, texts):
    split = tmp_path / "split"
    split.mkdir()
    (split / "part0.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return split


def test_state_folder_held_by_another_process_is_refused_then_taken_over(tmp_path, tiny_gpt2_dir, capsys,
                                                                         caplog):
    from detoxflow.cli import main

    state = tmp_path / "state"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(state)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        assert holder.stdout.readline().strip() == "locked"
        split = _split_dir(tmp_path, TEXTS)
        argv = ["tv-finetune", "--base", str(tiny_gpt2_dir), "--split-dir", str(split), "--part", "0",
                "--settings", json.dumps({"lr": 5e-3, "epochs": 1, "batch_size": 4, "max_length": 16}),
                "--state-dir", str(state), "--device", "cpu", "--out", str(tmp_path / "out")]
        capsys.readouterr()
        assert main(argv) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err) == 1
        assert f"state folder '{state}' is in use by pid {holder.pid} on host" in err[0]
        assert not (tmp_path / "out").exists()
    finally:
        holder.kill()  # SIGKILL: no cleanup, the lock file stays with a dead pid
        holder.wait()
    assert json.loads((state / "lock").read_text())["pid"] == holder.pid
    with caplog.at_level(logging.WARNING, logger=ft_module.__name__):
        assert main(argv) == 0
    assert any(f"left by pid {holder.pid}" in r.getMessage() and "taking over" in r.getMessage()
               for r in caplog.records)
    assert (tmp_path / "out" / "model.safetensors").is_file() and not state.exists()


def test_lock_is_released_on_exceptions_and_checkpoint_temporaries_are_unique(tmp_path, tiny_gpt2_dir, monkeypatch):
    state = tmp_path / "state"
    state.mkdir()
    orphan = state / ".checkpoint.oldrun.tmp"  # left by a killed run
    orphan.mkdir()
    run_ids = []
    real_save = ft_module.save_checkpoint

    def spy(*args, **kw):
        run_ids.append(args[-1])
        assert not list(state.glob(".checkpoint.*.tmp"))  # the orphan was removed under the lock
        return real_save(*args, **kw)

    monkeypatch.setattr(ft_module, "save_checkpoint", spy)
    for stop in (2, 1):  # checkpoints at steps 1, 2, then (resumed) 3
        with pytest.raises(Interrupted):
            finetune(tiny_gpt2_dir, TEXTS, tmp_path / "out", state, _settings(checkpoint_every=1),
                     stop_after_steps=stop)
        assert not (state / "lock").exists()  # released although the run raised
    assert len(run_ids) == 3 and run_ids[0] == run_ids[1] != run_ids[2]  # one name per run
    assert all(str(os.getpid()) in r for r in run_ids)
    assert not orphan.exists()


def test_lock_without_flock_uses_exclusive_create(tmp_path, monkeypatch, caplog):
    """On file systems without flock: O_EXCL; a live holder refuses, a dead holder on this host is taken over."""
    import socket

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(ft_module.fcntl, "flock", no_flock)
    state = tmp_path / "state"
    with StateLock(state):
        with pytest.raises(DetoxflowError, match=rf"'{state}' is in use by pid {os.getpid()}"):
            StateLock(state).acquire()
    assert not (state / "lock").exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    (state / "lock").write_text(json.dumps({"pid": os.getppid(), "host": host}))
    with pytest.raises(DetoxflowError, match=rf"pid {os.getppid()} on host {host}"):
        StateLock(state).acquire()
    (state / "lock").write_text(json.dumps({"pid": dead.pid, "host": "elsewhere"}))
    with pytest.raises(DetoxflowError, match=rf"pid {dead.pid} on host elsewhere"):  # cannot tell: refuse
        StateLock(state).acquire()
    (state / "lock").write_text(json.dumps({"pid": dead.pid, "host": host}))
    with caplog.at_level(logging.WARNING, logger=ft_module.__name__):
        lock = StateLock(state).acquire()
    assert json.loads((state / "lock").read_text())["pid"] == os.getpid()
    assert any(f"left by pid {dead.pid}" in r.getMessage() for r in caplog.records)
    lock.release()
    assert not (state / "lock").exists() and not list(state.glob("lock.stale.*"))


def test_sharded_state_path_resumes_identically(tmp_path, tiny_gpt2_dir, uninterrupted, monkeypatch):
    """The FSDP/DeepSpeed path (accelerate's save_state/load_state, weights gathered with get_state_dict and
    loaded into a fresh copy before saving), forced on one CPU process: same weights as the plain path."""
    full, _ = uninterrupted
    monkeypatch.setattr(ft_module, "accelerate_owns_state", lambda accelerator: True)
    state = tmp_path / "state"
    with pytest.raises(Interrupted):
        finetune(tiny_gpt2_dir, TEXTS, tmp_path / "out", state, _settings(), stop_after_steps=3)
    assert (state / "checkpoint" / "model.safetensors").is_file()  # accelerate's own checkpoint layout
    log = finetune(tiny_gpt2_dir, TEXTS, tmp_path / "out", state, _settings())
    assert log["resumed_from_step"] == 2
    a, b = _weights(full), _weights(tmp_path / "out")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sharded_save_path_merges_lora(tmp_path, tiny_gpt2_dir, monkeypatch):
    settings = _settings(lr=2e-2, checkpoint_every=0, lora={"enabled": True, "r": 2, "target_modules": ["c_attn"]})
    finetune(tiny_gpt2_dir, TEXTS, tmp_path / "plain", tmp_path / "s0", settings)
    monkeypatch.setattr(ft_module, "accelerate_owns_state", lambda accelerator: True)
    finetune(tiny_gpt2_dir, TEXTS, tmp_path / "sharded", tmp_path / "s1", settings)
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "sharded")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_data_parallel_on_two_cpu_processes_matches_one_process(tmp_path, tiny_gpt2_dir, gpt2_tokenizer):
    """torchrun with 2 processes (gloo): each takes half of every global batch; with equal-length
    sequences and no dropout the result equals one process with the doubled micro-batch."""
    from transformers import AutoModelForCausalLM

    from detoxflow.models import save_model_folder

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = 0.0
    base = save_model_folder(model, gpt2_tokenizer, tmp_path / "base", method="base")
    candidates = [f"toxic sentence number {i} you idiot" for i in range(10, 100)]
    lengths = [len(gpt2_tokenizer(t)["input_ids"]) for t in candidates]
    common = max(set(lengths), key=lengths.count)
    texts = [t for t, n in zip(candidates, lengths) if n == common][:16]
    assert len(texts) == 16
    split = tmp_path / "split"
    split.mkdir()
    (split / "part0.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))

    settings = {"lr": 5e-3, "epochs": 1, "batch_size": 2, "max_length": 16, "checkpoint_every": 0,
                "precision": "fp32"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "detoxflow",
           "tv-finetune", "--base", str(base), "--split-dir", str(split), "--part", "0", "--settings",
           json.dumps(settings), "--state-dir", str(tmp_path / "s"), "--device", "cpu", "--threads", "1",
           "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = json.loads((tmp_path / "ddp" / "training.json").read_text())
    assert log["processes"] == 2 and log["steps"] == 4  # 16 rows / (2 per process x 2 processes)

    one = FinetuneSettings.from_dict(dict(settings, batch_size=4))
    finetune(base, texts, tmp_path / "one", tmp_path / "s1", one, device="cpu")
    a, b = _weights(tmp_path / "ddp"), _weights(tmp_path / "one")
    for key in a:
        # updates are ~1e-2; all-reduce rounding differs at ~1e-8, and Adam amplifies it to ~5e-6 in
        # the attention key bias, whose gradient is zero up to rounding
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=2e-5, msg=key)
    pre = _weights(base)
    assert min((a[k] - pre[k]).abs().max().item() for k in a) > 5e-3

    # killed (the whole process group, SIGKILL) after a checkpoint, then rerun: the same weights as an
    # uninterrupted two-process run; the killed run's lock is taken over
    def variant(state_name, out_name, **changes):
        c = [x if x != str(tmp_path / "s") else str(tmp_path / state_name) for x in cmd]
        c[c.index("--out") + 1] = str(tmp_path / out_name)
        c[c.index("--settings") + 1] = json.dumps(dict(settings, **changes))
        return c

    longer = {"epochs": 6, "checkpoint_every": 1}  # 24 steps: time to kill it mid-way
    ref = subprocess.run(variant("s_ref", "ddp_ref", **longer), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    resumed = variant("s_kill", "ddp_resumed", **longer)
    proc = subprocess.Popen(resumed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "s_kill" / "checkpoint" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file() and json.loads(ckpt.read_text())["step"] >= 3:
            break
        time.sleep(0.02)
    import psutil

    launcher = psutil.Process(proc.pid)
    for p in [*launcher.children(recursive=True), launcher]:  # the workers live in sessions of their own
        p.kill()
    proc.wait()
    if not (tmp_path / "s_kill" / "lock").is_file():
        pytest.skip("training finished before it could be killed")
    done = subprocess.run(resumed, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "taking over the lock" in done.stderr
    log2 = json.loads((tmp_path / "ddp_resumed" / "training.json").read_text())
    assert log2["resumed_from_step"] >= 3 and log2["processes"] == 2 and log2["steps"] == 24
    r, c = _weights(tmp_path / "ddp_ref"), _weights(tmp_path / "ddp_resumed")
    assert all(torch.equal(r[k], c[k]) for k in r)

    # a held state folder: the main process's refusal reaches every process, which all exit (no hang)
    state = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(state)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        assert holder.stdout.readline().strip() == "locked"
        held = [c if c != str(tmp_path / "s") else str(state) for c in cmd]
        held[held.index("--out") + 1] = str(tmp_path / "held_out")
        proc = subprocess.run(held, capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode != 0
    assert proc.stderr.count(f"is in use by pid {holder.pid}") == 2, proc.stderr[-3000:]  # both ranks say why
    assert not (tmp_path / "held_out").exists()


def _accelerator_double(kind: str, ds_config: dict | None = None, fsdp2: bool = True):
    """Stands in for an Accelerator under FSDP / DeepSpeed (attributes that configure_sharding reads)."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    return SimpleNamespace(distributed_type=getattr(DistributedType, kind), is_fsdp2=fsdp2,
                           state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=ds_config)))


def test_configure_sharding_fills_deepspeed_auto_values_and_refuses_contradictions():
    settings = _settings(batch_size=4, max_grad_norm=0.5)
    cfg = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
           "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": "auto"}}
    ft_module.configure_sharding(_accelerator_double("DEEPSPEED", cfg), settings)
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 1
    assert cfg["gradient_clipping"] == 0.5  # absent: taken from max_grad_norm
    assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    for key, value in [("gradient_accumulation_steps", 2), ("train_micro_batch_size_per_gpu", 8),
                       ("gradient_clipping", 1.0)]:
        with pytest.raises(DetoxflowError, match=f"DeepSpeed config {key} is {value!r}"):
            ft_module.configure_sharding(_accelerator_double("DEEPSPEED", {key: value}), settings)
    no_gather = {"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": False}}
    with pytest.raises(DetoxflowError, match="stage3_gather_16bit_weights_on_model_save must be true"):
        ft_module.configure_sharding(_accelerator_double("DEEPSPEED", no_gather), settings)
    with pytest.raises(DetoxflowError, match="fsdp_version: 2"):
        ft_module.configure_sharding(_accelerator_double("FSDP", fsdp2=False), settings)
    ft_module.configure_sharding(_accelerator_double("FSDP", fsdp2=True), settings)  # FSDP2: nothing to change
    ft_module.configure_sharding(_accelerator_double("MULTI_CPU"), settings)
