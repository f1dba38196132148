"""Merge and negate: exact math on tiny models, tied weights, integer buffers, mismatch errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from detoxflow.errors import DetoxflowError
from detoxflow.methods.task_vectors.merge import merge_task_vectors
from detoxflow.models import read_metadata, save_model_folder


def _perturbed(base_dir: Path, out: Path, tokenizer, seed: int, scale: float = 0.01) -> Path:
    """A 'fine-tuned' model: the base with every floating parameter nudged by seeded noise."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # a tied matrix is listed (and nudged) once
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return save_model_folder(model, tokenizer, out, method="finetune_descent", params={})


def _state(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(folder).state_dict().items()}


@pytest.fixture(scope="module")
def gpt2_family(tmp_path_factory, tiny_gpt2_dir, gpt2_tokenizer):
    root = tmp_path_factory.mktemp("tv_merge")
    fts = [_perturbed(tiny_gpt2_dir, root / f"ft{i}", gpt2_tokenizer, seed=i + 1) for i in range(3)]
    return tiny_gpt2_dir, fts


@pytest.mark.parametrize("lam,chunk", [(1.0, 1 << 22), (0.4, 1 << 22), (1.0, 4096)])
def test_negated_mean_task_vector_is_exact(tmp_path, gpt2_family, lam, chunk):
    base, fts = gpt2_family
    out = tmp_path / "merged"
    # chunk=4096: the larger matrices is read, combined and written in many row ranges
    report = merge_task_vectors(base, fts, out, lam=lam, params={"n_splits": 3, "lambda": lam},
                                chunk_elements=chunk)
    pre, thetas, got = _state(base), [_state(f) for f in fts], _state(out)
    for key, p in pre.items():
        # the paper's description: negate each task vector, then average the negated models
        negated = [p.double() - lam * (t[key].double() - p.double()) for t in thetas]
        expected = (sum(negated) / len(negated)).to(p.dtype)
        torch.testing.assert_close(got[key], expected, rtol=0, atol=1e-7, msg=key)
    assert report["combined_tensors"] == len(load_file(base / "model.safetensors"))
    meta = read_metadata(out)
    assert meta["method"] == "task_vector_merge" and meta["params"] == {"n_splits": 3, "lambda": lam}
    # config and tokenizer come from the base
    assert json.loads((out / "config.json").read_text()) == json.loads((base / "config.json").read_text())
    assert (out / "tokenizer_config.json").is_file()


def test_tied_weights_combined_once(tmp_path, gpt2_family):
    base, fts = gpt2_family
    # one fine-tuned folder also stores the tied alias explicitly, with garbage: it must be ignored
    odd = tmp_path / "odd"
    shutil.copytree(fts[0], odd)
    tensors = load_file(odd / "model.safetensors")
    assert "lm_head.weight" not in tensors  # save_pretrained stores the tied matrix once
    tensors["lm_head.weight"] = torch.full_like(tensors["transformer.wte.weight"], 7.0)
    save_file(tensors, str(odd / "model.safetensors"), metadata={"format": "pt"})

    out = tmp_path / "merged"
    merge_task_vectors(base, [odd, fts[1]], out, lam=1.0)
    with safe_open(str(out / "model.safetensors"), framework="pt") as fh:
        keys = set(fh.keys())
    assert keys == set(load_file(base / "model.safetensors"))

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    wte, head = model.transformer.wte.weight, model.lm_head.weight
    assert head.data_ptr() == wte.data_ptr()
    pre = load_file(base / "model.safetensors")["transformer.wte.weight"].double()
    a = load_file(fts[0] / "model.safetensors")["transformer.wte.weight"].double()
    b = load_file(fts[1] / "model.safetensors")["transformer.wte.weight"].double()
    expected = (pre - ((a - pre) + (b - pre)) / 2).float()
    torch.testing.assert_close(wte.detach(), expected, rtol=0, atol=1e-7)


def _with_extra(src: Path, dst: Path, extra: dict[str, torch.Tensor], drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    for key in drop:
        tensors.pop(key)
    tensors.update(extra)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_integer_buffers_are_copied_from_base(tmp_path, gpt2_family):
    base0, fts0 = gpt2_family
    ints = {"buf.position_ids": torch.arange(10).unsqueeze(0), "buf.mask": torch.tensor([True, False, True])}
    base = _with_extra(base0, tmp_path / "base", ints)
    ft_a = _with_extra(fts0[0], tmp_path / "a", {"buf.position_ids": torch.arange(10).unsqueeze(0) * 3,
                                                   "buf.mask": torch.tensor([False, False, False])})
    # b does not store the integer buffers at all: they come from the base anyway
    ft_b = _with_extra(fts0[1], tmp_path / "b", {})
    out = tmp_path / "merged"
    report = merge_task_vectors(base, [ft_a, ft_b], out, lam=1.0)
    got, pre = load_file(out / "model.safetensors"), load_file(base / "model.safetensors")
    assert torch.equal(got["buf.position_ids"], ints["buf.position_ids"])
    assert got["buf.position_ids"].dtype == torch.long
    assert torch.equal(got["buf.mask"], ints["buf.mask"])
    assert set(report["copied_non_floating"]) == {"buf.position_ids", "buf.mask"}
    # every floating tensor was combined
    assert report["combined_tensors"] == len(pre) - 2
    assert not torch.equal(got["transformer.ln_f.bias"], pre["transformer.ln_f.bias"])


def _cli_merge(base, fts, out, capsys) -> tuple[int, list[str]]:
    from detoxflow.cli import main

    capsys.readouterr()
    rc = main(["tv-merge", "--base", str(base), "--finetuned", *map(str, fts), "--lambda", "1.0", "--out", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    return rc, err


def _no_output(out: Path) -> bool:
    return not out.exists() and not list(out.parent.glob(f".{out.name}.*"))


def test_cli_finetuned_model_lacking_a_base_tensor_fails_naming_it(tmp_path, gpt2_family, capsys):
    base, fts = gpt2_family
    lacking = _with_extra(fts[1], tmp_path / "lacking", {},
                          drop=("transformer.ln_f.bias", "transformer.h.0.attn.c_proj.weight"))
    out = tmp_path / "merged"
    rc, err = _cli_merge(base, [fts[0], lacking], out, capsys)
    assert rc == 2 and len(err) == 1, err
    line = err[0]
    assert line.startswith("detoxflow tv-merge: error:")
    assert f"'{lacking}' lacks transformer.h.0.attn.c_proj.weight, transformer.ln_f.bias" in line
    assert "model.safetensors" in line and str(fts[0]) + "'" not in line  # only the culprit is named
    assert _no_output(out)


def test_cli_finetuned_model_with_extra_tensors_fails_naming_them(tmp_path, gpt2_family, capsys):
    base, fts = gpt2_family
    extra = _with_extra(fts[0], tmp_path / "extra", {"transformer.h.0.attn.extra.weight": torch.zeros(3, 3),
                                                     "score.bias": torch.zeros(2)})
    out = tmp_path / "merged"
    rc, err = _cli_merge(base, [extra, fts[1]], out, capsys)
    assert rc == 2 and len(err) == 1, err
    assert (f"'{extra}' has tensor(s) the base lacks: score.bias, transformer.h.0.attn.extra.weight "
            f"(in model.safetensors)") in err[0]
    assert _no_output(out)


def test_finetuned_model_storing_only_the_tied_alias_is_read_through_it(tmp_path, gpt2_family):
    base, fts = gpt2_family
    # the fine-tune stores the tied matrix under the output name only: the same parameter
    renamed = tmp_path / "renamed"
    shutil.copytree(fts[0], renamed)
    tensors = load_file(renamed / "model.safetensors")
    tensors["lm_head.weight"] = tensors.pop("transformer.wte.weight")
    save_file(tensors, str(renamed / "model.safetensors"), metadata={"format": "pt"})
    a = merge_task_vectors(base, [renamed, fts[1]], tmp_path / "a", lam=1.0)
    b = merge_task_vectors(base, [fts[0], fts[1]], tmp_path / "b", lam=1.0)
    assert a["combined_tensors"] == b["combined_tensors"]
    got, want = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_shape_mismatch_names_the_tensor(tmp_path, gpt2_family):
    base, fts = gpt2_family
    bad = _with_extra(fts[0], tmp_path / "bad", {"transformer.h.1.mlp.c_fc.bias": torch.zeros(7)})
    with pytest.raises(DetoxflowError, match=r"transformer\.h\.1\.mlp\.c_fc\.bias.*\[7\]"):
        merge_task_vectors(base, [fts[1], bad], tmp_path / "out", lam=1.0)
    assert not (tmp_path / "out").exists()


def test_architecture_mismatch_is_an_error(tmp_path, tiny_gpt2_dir, tiny_llama_dir):
    with pytest.raises(DetoxflowError, match="architecture mismatch.*llama.*gpt2"):
        merge_task_vectors(tiny_gpt2_dir, [tiny_llama_dir], tmp_path / "out", lam=1.0)


def test_non_safetensors_folder_is_an_error(tmp_path, tiny_gpt2_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(DetoxflowError, match="no model.safetensors"):
        merge_task_vectors(tiny_gpt2_dir, [empty], tmp_path / "out", lam=1.0)


def test_add_mode_reproduces_the_finetuned_model(tmp_path, gpt2_family):
    base, fts = gpt2_family
    out = tmp_path / "same"
    merge_task_vectors(base, [fts[2]], out, lam=1.0, negate=False, method="gradient_ascent")
    got, want = load_file(out / "model.safetensors"), load_file(fts[2] / "model.safetensors")
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-7)
    assert read_metadata(out)["method"] == "gradient_ascent"


def test_sharded_untied_base_keeps_its_sharding(tmp_path, tiny_llama_dir, gpt2_tokenizer):
    from transformers import AutoModelForCausalLM

    base = tmp_path / "base"
    AutoModelForCausalLM.from_pretrained(tiny_llama_dir).save_pretrained(base, max_shard_size="1MB")
    gpt2_tokenizer.save_pretrained(base)
    assert (base / "model.safetensors.index.json").is_file()
    fts = [_perturbed(tiny_llama_dir, tmp_path / f"ft{i}", gpt2_tokenizer, seed=10 + i) for i in range(2)]
    out = tmp_path / "merged"
    merge_task_vectors(base, fts, out, lam=0.5)
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(p.name for p in base.glob("*.safetensors"))
    pre, thetas, got = _state(base), [_state(f) for f in fts], _state(out)
    assert "lm_head.weight" in pre  # untied: both matrices are combined
    for key, p in pre.items():
        tau = sum(t[key].double() - p.double() for t in thetas) / 2
        torch.testing.assert_close(got[key], (p.double() - 0.5 * tau).float(), rtol=0, atol=1e-7, msg=key)


def test_cli_merge(tmp_path, gpt2_family):
    from detoxflow.cli import main

    base, fts = gpt2_family
    out = tmp_path / "cli"
    rc = main(["tv-merge", "--base", str(base), "--finetuned", *map(str, fts[:2]), "--lambda", "0.4",
               "--method", "task_vector", "--params", '{"lambda": 0.4, "n_splits": 1}', "--out", str(out)])
    assert rc == 0
    assert read_metadata(out)["params"] == {"lambda": 0.4, "n_splits": 1}
    rc = main(["tv-merge", "--base", str(base), "--finetuned", str(tmp_path / "nope"), "--lambda", "1",
               "--out", str(tmp_path / "x")])
    assert rc == 2


def test_bfloat16_base_stays_bfloat16(tmp_path, tiny_llama_dir, gpt2_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16)
    base = save_model_folder(model, gpt2_tokenizer, tmp_path / "base", method="base")
    ft = _perturbed(tiny_llama_dir, tmp_path / "ft", gpt2_tokenizer, seed=3, scale=0.05)  # float32 fine-tune
    out = tmp_path / "merged"
    merge_task_vectors(base, [ft], out, lam=0.5, chunk_elements=2048)
    got, pre, theta = (load_file(d / "model.safetensors") for d in (out, base, ft))
    assert read_metadata(out)["dtype"] == "bfloat16"
    for key, p in pre.items():
        assert got[key].dtype == torch.bfloat16
        want = (p.double() - 0.5 * (theta[key].double() - p.double())).to(torch.bfloat16)
        assert torch.equal(got[key], want), key


def test_streaming_writer_matches_safetensors(tmp_path):
    from detoxflow.methods.task_vectors.merge import StreamingSafetensorsWriter, row_chunks

    tensors = {"b": torch.randn(7, 5), "a": torch.arange(12, dtype=torch.int32).reshape(3, 4),
               "c": torch.tensor(3.5, dtype=torch.bfloat16), "d": torch.zeros(0, 3), "e": torch.tensor([True, False])}
    layout = {k: ({torch.float32: "F32", torch.int32: "I32", torch.bfloat16: "BF16", torch.bool: "BOOL"}[v.dtype],
                  tuple(v.shape)) for k, v in tensors.items()}
    with StreamingSafetensorsWriter(tmp_path / "x.safetensors", layout) as w:
        for key in w.order:
            for rows in row_chunks(tuple(tensors[key].shape), 10):
                w.write(key, tensors[key] if rows is None else tensors[key][rows])
    back = load_file(tmp_path / "x.safetensors")
    assert back.keys() == tensors.keys()
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    assert row_chunks((7, 5), 10) == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 7)]
    with pytest.raises(RuntimeError, match="out of order"):
        with StreamingSafetensorsWriter(tmp_path / "y.safetensors", layout) as w:
            w.write("b", tensors["b"])
