"""Fine-tune step: resume after an interruption, LoRA path, gradient ascent, schedule, settings."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from detoxflow.errors import DetoxflowError
from detoxflow.methods.task_vectors.finetune import (
    FinetuneSettings,
    Interrupted,
    epoch_groups,
    finetune,
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


def test_stale_checkpoint_is_discarded(tmp_path, tiny_gpt2_dir, uninterrupted):
    full, _ = uninterrupted
    state = tmp_path / "state"
    with pytest.raises(Interrupted):
        finetune(tiny_gpt2_dir, TEXTS, tmp_path / "x", state, _settings(lr=1e-2), stop_after_steps=2)
    # different lr: the checkpoint is not reused, the result equals a fresh run
    log = finetune(tiny_gpt2_dir, TEXTS, tmp_path / "out", state, _settings())
    assert log["resumed_from_step"] == 0
    a, b = _weights(full), _weights(tmp_path / "out")
    assert all(torch.equal(a[k], b[k]) for k in a)


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


def test_precision_on_cpu_and_settings_errors():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "no"
    assert resolve_precision("fp16", cpu) == "no"
    assert resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("fp32", cpu) == "no"
    with pytest.raises(DetoxflowError, match="unknown key"):
        FinetuneSettings.from_dict({"learning_rate": 1e-5})
    with pytest.raises(DetoxflowError, match="batch_size"):
        FinetuneSettings.from_dict({"batch_size": 0})
    # workflow keys are accepted and ignored
    s = FinetuneSettings.from_dict({"threads": 4, "mem_mb": 10, "runtime": 5, "accelerate": {"enabled": False}})
    assert s.lr == 1e-5 and s.epochs == 5 and s.batch_size == 16 and s.max_length == 128


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
