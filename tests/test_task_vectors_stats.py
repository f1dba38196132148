"""Task-vector norms and cosines, recomputed from in-memory state dicts."""

from __future__ import annotations

import math

import pytest
import torch

from detoxflow.errors import DetoxflowError
from detoxflow.methods.task_vectors.stats import stats_markdown, task_vector_stats
from test_task_vectors_merge import _perturbed, _state


@pytest.fixture(scope="module")
def family(tmp_path_factory, tiny_gpt2_dir, gpt2_tokenizer):
    root = tmp_path_factory.mktemp("tv_stats")
    fts = [_perturbed(tiny_gpt2_dir, root / f"ft{i}", gpt2_tokenizer, seed=i + 1, scale=0.01 * (i + 1))
           for i in range(4)]
    return tiny_gpt2_dir, fts


def _vector(pre, folders):
    """Mean task vector over the base's tensors (a tied matrix appears in the state dict twice: keep one)."""
    thetas = [_state(f) for f in folders]
    keys = [k for k in pre if k != "lm_head.weight" and pre[k].is_floating_point()]
    return torch.cat([(sum(t[k].double() for t in thetas) / len(thetas) - pre[k].double()).reshape(-1)
                      for k in keys])


def test_norms_and_cosine_equal_a_direct_computation(tiny_gpt2_dir, family):
    base, fts = family
    stats = task_vector_stats(base, {"single": [fts[3]], "merge_n3": fts[:3]})
    pre = _state(base)
    single, merged = _vector(pre, [fts[3]]), _vector(pre, fts[:3])
    assert stats["families"]["single"]["mean_norm"] == pytest.approx(float(single.norm()), rel=1e-9)
    assert stats["families"]["merge_n3"]["mean_norm"] == pytest.approx(float(merged.norm()), rel=1e-9)
    for got, folder in zip(stats["families"]["merge_n3"]["member_norms"], fts[:3]):
        assert got == pytest.approx(float(_vector(pre, [folder]).norm()), rel=1e-9)
    # the members were nudged by independent noise of scale 1, 2, 3 x 0.01: their norms grow accordingly
    norms = stats["families"]["merge_n3"]["member_norms"]
    assert norms[1] / norms[0] == pytest.approx(2, rel=0.02) and norms[2] / norms[0] == pytest.approx(3, rel=0.02)
    (cos,) = stats["cosines"]
    assert (cos["a"], cos["b"]) == ("single", "merge_n3")
    assert cos["cosine"] == pytest.approx(float(single @ merged / (single.norm() * merged.norm())), abs=1e-9)
    assert "| merge_n3 | 3 |" in stats_markdown(stats)


def test_a_vector_has_cosine_one_with_itself(family):
    base, fts = family
    stats = task_vector_stats(base, {"a": fts[:2], "b": list(reversed(fts[:2]))})
    assert stats["cosines"][0]["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert math.isclose(stats["families"]["a"]["mean_norm"], stats["families"]["b"]["mean_norm"], rel_tol=1e-12)


def test_bad_families_are_named(tmp_path, family):
    base, fts = family
    with pytest.raises(DetoxflowError, match="at least one family"):
        task_vector_stats(base, {"single": []})
    with pytest.raises(DetoxflowError, match="nope.*does not exist"):
        task_vector_stats(base, {"single": [tmp_path / "nope"]})
