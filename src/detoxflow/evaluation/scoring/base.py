"""The scorer interface and the registry that builds a scorer from config.

A scorer turns texts into P(toxic) in [0, 1], one float per text, in input
order. Every scorer shares the batching, the progress bar and the output
checks implemented here; a concrete scorer only implements ``_score_batch``.

Scorer modules are imported lazily, so ``import detoxflow.evaluation.scoring`` does not
pull in torch or transformers.
"""

from __future__ import annotations

import importlib
import logging
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Iterable, Mapping, Sequence

from tqdm.auto import tqdm

from ...errors import DetoxflowError

log = logging.getLogger(__name__)

# config name -> "module:Class" (relative to this package)
SCORERS: dict[str, str] = {
    "profanity-check": "profanity:ProfanityCheckScorer",
    "detoxify": "detoxify_scorer:DetoxifyScorer",
    "perspective": "perspective:PerspectiveScorer",
    "hf-classifier": "hf_classifier:HFClassifierScorer",
}

# Tolerance for values a hair outside [0, 1] from floating point noise.
_EPS = 1e-6


class Scorer(ABC):
    """Base class: ``score(texts) -> list[float]`` with P(toxic) in [0, 1].

    Subclasses set ``name`` and implement ``_score_batch``. Set
    ``sort_by_length`` where batches are padded (neural scorers): texts are
    then scored longest first and the results put back in input order.
    Subclasses that advance the progress bar themselves (per text) set
    ``reports_progress`` and call ``self._advance(n)``.
    """

    name: ClassVar[str] = "scorer"
    sort_by_length: ClassVar[bool] = False
    reports_progress: ClassVar[bool] = False
    # option keys accepted by ``from_options`` (the config block's keys)
    option_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, batch_size: int = 64, progress: bool = True) -> None:
        if int(batch_size) < 1:
            raise DetoxflowError(f"{self.name}: batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.progress = progress
        self._bar = None
        self._batch_indices: Sequence[int] = ()  # input positions of the batch being scored

    # -- construction from config -------------------------------------------------
    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None, *, batch_size: int = 64, **extra) -> "Scorer":
        """Build from the scorer's config block (``evaluation.toxicity.<name>``).

        ``extra`` are constructor arguments that are not config keys (tests,
        ``progress=False``)."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(cls.option_keys))
        if unknown:
            known = ", ".join(cls.option_keys) or "(none)"
            raise DetoxflowError(
                f"evaluation.toxicity.{cls.name.replace('-', '_')}: unknown option(s) {', '.join(unknown)}; "
                f"known: {known}"
            )
        return cls(**options, **extra, batch_size=batch_size)

    # -- scoring --------------------------------------------------------------------
    def score(self, texts: Iterable[str]) -> list[float]:
        """P(toxic) for every text, same order and length as ``texts``."""
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise DetoxflowError(
                    f"{self.name}: text #{i} is {type(text).__name__}, not a string; "
                    f"every continuation must be a string (empty strings are allowed)"
                )
        n = len(texts)
        if n == 0:
            return []
        order = list(range(n))
        if self.sort_by_length:
            order.sort(key=lambda i: len(texts[i]), reverse=True)
        out: list[float | None] = [None] * n
        with tqdm(total=n, desc=f"toxicity ({self.name})", unit="text", disable=not self.progress,
                  mininterval=2.0) as bar:
            self._bar = bar
            try:
                for start in range(0, n, self.batch_size):
                    idx = order[start:start + self.batch_size]
                    batch = [texts[i] for i in idx]
                    self._batch_indices = idx  # input positions of this batch, for error messages
                    values = list(self._score_batch(batch))
                    if len(values) != len(batch):
                        raise RuntimeError(
                            f"{self.name}: scored {len(values)} of {len(batch)} texts in a batch"
                        )
                    for i, v in zip(idx, values):
                        out[i] = self._check(v, i)
                    if not self.reports_progress:
                        bar.update(len(batch))
            finally:
                self._bar = None
        return out  # type: ignore[return-value]

    def _advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def _check(self, value: Any, index: int) -> float:
        """``value`` as a probability; ``index`` is the text's position in the input."""
        v = float(value)
        if not math.isfinite(v) or v < -_EPS or v > 1 + _EPS:
            raise DetoxflowError(f"{self.name}: text #{index} scored {v}, not a probability in [0, 1]")
        return min(1.0, max(0.0, v))

    @abstractmethod
    def _score_batch(self, texts: Sequence[str]) -> Sequence[float]:
        """P(toxic) for one batch, in order."""

    # -- resources ------------------------------------------------------------------
    def close(self) -> None:
        """Release resources (model memory, connections, cache). Safe to call twice."""

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} batch_size={self.batch_size}>"


def scorer_class(name: str) -> type[Scorer]:
    """The class registered under ``name`` (e.g. ``"detoxify"``)."""
    if name not in SCORERS:
        raise DetoxflowError(
            f"unknown toxicity scorer '{name}' (evaluation.toxicity.scorer); "
            f"known scorers: {', '.join(SCORERS)}"
        )
    module, cls = SCORERS[name].split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)


def build_scorer(name: str, options: Mapping[str, Any] | None = None, batch_size: int = 64, **kwargs) -> Scorer:
    """Build the scorer ``name`` from its config block.

    ``options`` is ``config["evaluation"]["toxicity"][name.replace("-", "_")]``
    (``{}`` or ``None`` for profanity-check). Extra keyword arguments go to the
    constructor (e.g. ``progress=False``); they are not config keys.
    """
    return scorer_class(name).from_options(options, batch_size=batch_size, **kwargs)
