"""``hf-classifier``: any local Hugging Face sequence-classification folder.

P(toxic) = softmax(logits)[toxic_label] (single-label classifiers, e.g.
s-nlp/roberta_toxicity_classifier, label 1) or sigmoid(logits[toxic_label])
(multi-label or single-logit classifiers, e.g. unitary/toxic-bert, label 0).
Texts longer than ``max_length`` tokens are truncated.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from ...errors import DetoxflowError
from .base import Scorer

log = logging.getLogger(__name__)

ACTIVATIONS = ("softmax", "sigmoid")


def _key(name: str) -> str:
    return f"evaluation.toxicity.hf_classifier.{name}"


class HFClassifierScorer(Scorer):
    name = "hf-classifier"
    sort_by_length = True
    option_keys = ("path", "toxic_label", "activation", "max_length", "device")

    def __init__(
        self,
        *,
        path: str | None = None,
        toxic_label: int = 1,
        activation: str = "softmax",
        max_length: int = 512,
        device: str = "auto",
        batch_size: int = 64,
        progress: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, progress=progress)
        if not path:
            raise DetoxflowError(
                f"hf-classifier needs {_key('path')}: a local folder with a Hugging Face "
                f"sequence-classification model (config.json, weights, tokenizer)"
            )
        folder = Path(path)
        if not folder.is_dir() or not (folder / "config.json").is_file():
            raise DetoxflowError(
                f"{_key('path')} = {path}: not a Hugging Face model folder (no config.json); "
                f"download the classifier once with `hf download <repo> --local-dir <folder>`"
            )
        if activation not in ACTIVATIONS:
            raise DetoxflowError(f"{_key('activation')}: '{activation}' is not one of {', '.join(ACTIVATIONS)}")
        if int(max_length) < 1:
            raise DetoxflowError(f"{_key('max_length')} must be >= 1, got {max_length}")

        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        from ...runtime import resolve_device
        from ._transformers import effective_max_length, empty_substitute, prepare_tokenizer

        try:
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise DetoxflowError(f"{_key('path')} = {path}: unreadable config.json: {str(exc).splitlines()[0]}") from None
        num_labels = int(getattr(config, "num_labels", 0) or 0)
        toxic_label = int(toxic_label)
        if not 0 <= toxic_label < num_labels:
            labels = getattr(config, "id2label", None) or {}
            raise DetoxflowError(
                f"{_key('toxic_label')} = {toxic_label}, but the classifier in {path} has {num_labels} "
                f"output(s) (labels: {labels}); pick the index of the toxic label"
            )
        if activation == "softmax" and num_labels == 1:
            raise DetoxflowError(
                f"{_key('activation')}: softmax over the single output of {path} is always 1; use sigmoid"
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise DetoxflowError(
                f"{_key('path')} = {path}: could not load a sequence classifier: {str(exc).splitlines()[0]}"
            ) from None
        self.device = resolve_device(device)
        self.model = model.float().to(self.device).eval()
        try:
            prepare_tokenizer(self.tokenizer, self.model)
        except ValueError as exc:
            raise DetoxflowError(f"{_key('path')} = {path}: {exc}") from None
        self.toxic_label = toxic_label
        self.activation = activation
        self.max_length = effective_max_length(self.tokenizer, int(max_length), self.model)
        self._empty_as = empty_substitute(self.tokenizer)
        self._torch = torch
        label_name = (getattr(config, "id2label", None) or {}).get(toxic_label, str(toxic_label))
        log.info("hf-classifier: %s, P(label %d '%s') by %s, max_length %s, on %s", path, toxic_label,
                 label_name, activation, self.max_length, self.device)

    def _score_batch(self, texts: Sequence[str]) -> Sequence[float]:
        from ._transformers import classify_logits

        logits = classify_logits(self.model, self.tokenizer, texts, max_length=self.max_length,
                                 device=self.device, empty_as=self._empty_as)
        if self.activation == "softmax":
            probs = self._torch.softmax(logits, dim=-1)[:, self.toxic_label]
        else:
            probs = self._torch.sigmoid(logits[:, self.toxic_label])
        return probs.tolist()

    def close(self) -> None:
        model = getattr(self, "model", None)
        if model is not None:
            self.model = None
            if self.device.type == "cuda":
                del model
                self._torch.cuda.empty_cache()
