"""Choosing lambda: Ilharco's perplexity rule and toxicity matching on hand-made evaluation files."""

from __future__ import annotations

import pytest

from detoxflow.cli import main
from detoxflow.errors import DetoxflowError
from detoxflow.io import read_json, write_json, write_metrics
from detoxflow.methods.task_vectors.choose_lambda import choose_lambda, markdown

# model -> (perplexity, mean_toxicity)
EVALS = {
    "base": (20.0, 0.30),
    "tv_single_l0.2": (20.2, 0.25),
    "tv_single_l0.4": (20.45, 0.20),
    "tv_single_l0.6": (21.0, 0.15),
    "tv_single_l0.8": (22.0, 0.10),
    "tv_merge_n5_l1.0": (20.4, 0.16),
    "tv_merge_n2_l1.0": (20.9, 0.21),
}


def _variants(root):
    """The points as the workflow names them: each variant with its evaluation files."""
    def files(model):
        return {"perplexity": str(root / model / "perplexity.json"), "toxicity": str(root / model / "plain" / "toxicity.json")}

    out = [{"model": "base", "family": "base", "n_splits": None, "lambda": 0.0, **files("base")}]
    for name in EVALS:
        if name.startswith("tv_single"):
            out.append({"model": name, "family": "single", "n_splits": 1, "lambda": float(name.split("_l")[1]),
                        **files(name)})
        elif name.startswith("tv_merge"):
            n = int(name.split("_n")[1].split("_")[0])
            out.append({"model": name, "family": "merge", "n_splits": n, "lambda": float(name.split("_l")[1]),
                        **files(name)})
    return out


@pytest.fixture()
def eval_dir(tmp_path):
    for model, (ppl, tox) in EVALS.items():
        write_metrics(tmp_path / model / "perplexity.json", {"perplexity": ppl}, n_tokens=100)
        write_json(tmp_path / model / "plain" / "toxicity.json", {
            "mean_toxicity": tox, "expected_max_toxicity": tox * 2, "toxicity_probability": tox / 2,
            "toxic_fraction": tox / 3})
    return tmp_path


def test_ilharco_rule_picks_largest_lambda_within_margin(eval_dir):
    result = choose_lambda(_variants(eval_dir), ppl_margin=0.5, metric="mean_toxicity")
    # single: 0.2 (20.2) and 0.4 (20.45) are within 20.5; 0.6 is not
    assert result["ilharco"]["single"]["lambda"] == 0.4
    assert result["ilharco"]["single"]["model"] == "tv_single_l0.4"
    assert result["ilharco"]["merge_n5"]["lambda"] == 1.0
    # N = 2 exceeds the limit at its only lambda: lambda 0 (the base) is chosen
    assert result["ilharco"]["merge_n2"]["lambda"] == 0.0
    assert result["ilharco"]["merge_n2"]["model"] == "base"
    tight = choose_lambda(_variants(eval_dir), ppl_margin=0.3, metric="mean_toxicity")
    assert tight["ilharco"]["single"]["lambda"] == 0.2


def test_toxicity_matching_and_degradation(eval_dir):
    result = choose_lambda(_variants(eval_dir), ppl_margin=0.5, metric="mean_toxicity")
    rows = {r["merged_model"]: r for r in result["matching"]}
    n5 = rows["tv_merge_n5_l1.0"]
    # merged toxicity 0.16: closest single is 0.6 (0.15), not 0.4 (0.20)
    assert n5["single_lambda"] == 0.6 and n5["toxicity_gap"] == pytest.approx(0.01)
    assert n5["ppl_increase_merged"] == pytest.approx(0.4)
    assert n5["ppl_increase_single"] == pytest.approx(1.0)
    assert n5["degradation_reduction"] == pytest.approx(0.6)
    assert rows["tv_merge_n2_l1.0"]["single_lambda"] == 0.4  # 0.21 is closest to 0.20
    # interpolated: 0.16 lies 4/5 of the way from lambda 0.4 (0.20, 20.45) to 0.6 (0.15, 21.0)
    assert n5["interpolated_single_lambda"] == pytest.approx(0.56)
    assert n5["interpolated_single_perplexity"] == pytest.approx(20.45 + 0.8 * 0.55)
    assert n5["interpolated_degradation_reduction"] == pytest.approx(1 - 0.4 / (0.45 + 0.44))
    # 0.21 lies between lambda 0.2 (0.25, 20.2) and 0.4 (0.20, 20.45)
    assert rows["tv_merge_n2_l1.0"]["interpolated_single_perplexity"] == pytest.approx(20.2 + 0.8 * 0.25)
    # another metric changes the match: toxicity_probability = tox / 2
    other = choose_lambda(_variants(eval_dir), ppl_margin=0.5, metric="toxicity_probability")
    assert {r["merged_model"]: r["single_lambda"] for r in other["matching"]}["tv_merge_n5_l1.0"] == 0.6


def test_markdown_and_errors(eval_dir):
    result = choose_lambda(_variants(eval_dir), ppl_margin=0.5, metric="mean_toxicity")
    md = markdown(result)
    assert "| tv_merge_n5_l1.0 | 20.4 | 0.56 | 20.89 | 55.1% |" in md
    assert "| tv_merge_n5_l1.0 | 0.16 | 20.4 | 0.6 | 0.15 | 21 | 0.4 / 1 | 60.0% |" in md
    assert "| single | 0.4 | tv_single_l0.4 | 20.45 | 0.2 |" in md
    with pytest.raises(DetoxflowError, match="metric must be one of"):
        choose_lambda(_variants(eval_dir), ppl_margin=0.5, metric="toxicity")
    missing = _variants(eval_dir) + [{"model": "tv_single_l1.0", "family": "single", "n_splits": 1, "lambda": 1.0,
                                      "perplexity": str(eval_dir / "nope.json"), "toxicity": str(eval_dir / "t.json")}]
    with pytest.raises(DetoxflowError, match=r"nope\.json: file not found"):
        choose_lambda(missing, ppl_margin=0.5, metric="mean_toxicity")


def test_cli_writes_json_markdown_and_plot(eval_dir, tmp_path):
    import json

    out = tmp_path / "out"
    rc = main(["tv-choose-lambda", "--points", json.dumps(_variants(eval_dir)),
               "--settings", json.dumps({"ppl_margin": 0.5, "metric": "mean_toxicity"}),
               "--json", str(out / "c.json"), "--markdown", str(out / "c.md"), "--plot", str(out / "c.png")])
    assert rc == 0
    assert read_json(out / "c.json")["ilharco"]["single"]["lambda"] == 0.4
    assert (out / "c.md").read_text().startswith("# Choosing lambda")
    assert (out / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interpolation_outside_the_sweep_is_none():
    from detoxflow.methods.task_vectors.choose_lambda import interpolate_single

    base = {"perplexity": 20.0, "mean_toxicity": 0.3}
    singles = [{"lambda": 0.5, "perplexity": 21.0, "mean_toxicity": 0.2}]
    assert interpolate_single(singles, base, "mean_toxicity", 0.1) is None
    assert interpolate_single(singles, base, "mean_toxicity", 0.25) == pytest.approx((0.25, 20.5))
