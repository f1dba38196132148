"""``profanity-check``: the offline default scorer (alt-profanity-check).

A linear SVM on TF-IDF features trained on Jigsaw + Davidson data, calibrated
to a probability; ``profanity_check.predict_prob``. Fast on a CPU, no model
download, coarse: it mostly reacts to profanity and slurs.
"""

from __future__ import annotations

import warnings
from typing import Sequence

from ...errors import DetoxflowError
from .base import Scorer


class ProfanityCheckScorer(Scorer):
    name = "profanity-check"
    option_keys = ()

    def __init__(self, *, batch_size: int = 64, progress: bool = True) -> None:
        super().__init__(batch_size=batch_size, progress=progress)
        try:
            with warnings.catch_warnings():
                # the pickled sklearn model warns when sklearn is newer than the one it was saved with
                warnings.simplefilter("ignore")
                from profanity_check import predict_prob
        except ImportError:
            raise DetoxflowError(
                "scorer profanity-check needs the 'alt-profanity-check' package: pip install alt-profanity-check"
            ) from None
        self._predict_prob = predict_prob

    def _score_batch(self, texts: Sequence[str]) -> Sequence[float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [float(v) for v in self._predict_prob(list(texts))]
