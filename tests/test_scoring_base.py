"""Scorer registry, shared batching, and the profanity-check scorer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from detoxflow.errors import DetoxflowError
from detoxflow.evaluation.scoring import SCORERS, Scorer, build_scorer, scorer_class

REPO = Path(__file__).resolve().parents[1]


class _LengthScorer(Scorer):
    """Score = len(text) / 100; records the batches it saw."""

    name = "length"
    option_keys = ("scale",)

    def __init__(self, *, scale: float = 100.0, batch_size: int = 64, progress: bool = False, sort=False):
        super().__init__(batch_size=batch_size, progress=progress)
        self.scale = scale
        self.batches: list[list[str]] = []
        self.sort_by_length = sort

    def _score_batch(self, texts):
        self.batches.append(list(texts))
        return [len(t) / self.scale for t in texts]


def test_registry_names_match_the_config_schema():
    import yaml

    schema = yaml.safe_load((REPO / "src/detoxflow/schema/config.schema.yaml").read_text())
    tox = schema["properties"]["evaluation"]["properties"]["toxicity"]["properties"]
    assert set(tox["scorer"]["enum"]) == set(SCORERS)
    # every scorer's option block in the schema has exactly the keys the scorer accepts
    for name in SCORERS:
        block = tox.get(name.replace("-", "_"), {"properties": {}})
        assert set(block["properties"]) == set(scorer_class(name).option_keys), name


def test_unknown_scorer_lists_known_ones():
    with pytest.raises(DetoxflowError) as err:
        build_scorer("toxic-bert-9000", {})
    for name in SCORERS:
        assert name in str(err.value)


def test_unknown_option_is_named():
    with pytest.raises(DetoxflowError, match="unknown option.*checkpoint"):
        build_scorer("profanity-check", {"checkpoint": "x"})


@pytest.mark.parametrize("sort", [False, True])
def test_batching_keeps_order_and_length(sort):
    texts = ["a" * n for n in (5, 0, 17, 3, 3, 40, 1, 9, 22, 0, 8)]
    scorer = _LengthScorer(batch_size=4, sort=sort)
    assert scorer.score(texts) == [len(t) / 100 for t in texts]
    assert [len(b) for b in scorer.batches] == [4, 4, 3]
    if sort:  # longest first, so padding per batch is small
        flat = [len(t) for b in scorer.batches for t in b]
        assert flat == sorted(flat, reverse=True)
    assert scorer.score([]) == []


def test_rejects_non_strings_and_out_of_range_values():
    with pytest.raises(DetoxflowError, match="text #1 is NoneType"):
        _LengthScorer().score(["ok", None])
    with pytest.raises(DetoxflowError, match=r"text #1 scored 7\.0, not a probability"):
        _LengthScorer(scale=1.0).score(["", "toolong"])
    # the index is the position in the input, also when batches are sorted by length
    with pytest.raises(DetoxflowError, match=r"text #2 scored nan"):
        _LengthScorer(scale=float("nan"), sort=True, batch_size=1).score(["", "", "x"])


def test_batch_size_must_be_positive():
    with pytest.raises(DetoxflowError, match="batch_size"):
        _LengthScorer(batch_size=0)


def test_import_is_light():
    """Importing the package (what the CLI does at start-up) must not load torch."""
    code = "import sys, detoxflow.evaluation.scoring; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_profanity_check_matches_predict_prob():
    from profanity_check import predict_prob

    texts = ["you are a fucking idiot", "have a lovely day", "", "shit", "the weather is nice today"] * 3
    with build_scorer("profanity-check", None, batch_size=4, progress=False) as scorer:
        scores = scorer.score(texts)
    expected = [float(v) for v in predict_prob(texts)]
    assert scores == pytest.approx(expected, abs=1e-12)
    assert scores[0] > 0.9 and scores[1] < 0.2
    assert all(0.0 <= s <= 1.0 for s in scores)
