"""Toxicity scorers for the evaluation: texts -> P(toxic) in [0, 1].

Usage (what the evaluation CLI does)::

    from detoxflow.evaluation.scoring import build_scorer
    scorer = build_scorer(name, options, batch_size=64)
    scores = scorer.score(texts)      # list[float], same order and length
    scorer.close()

``name`` is one of :data:`SCORERS` (``evaluation.toxicity.scorer``) and
``options`` its config block. See docs/scoring.md.
"""

from .base import SCORERS, Scorer, build_scorer, scorer_class

__all__ = ["SCORERS", "Scorer", "build_scorer", "scorer_class"]
