"""``detoxify``: Detoxify (original / unbiased / multilingual) from local files only.

A Detoxify release checkpoint (``.ckpt``) is a dict with ``state_dict`` (the
weights of a transformers ``*ForSequenceClassification`` model) and ``config``
(``arch.args``: ``model_type`` (a hub id such as bert-base-uncased),
``model_name`` (the transformers class), ``tokenizer_name``, ``num_classes``;
``dataset.args.classes``: the label names). The ``detoxify`` package rebuilds
the model from the hub id, which needs the network. Here the architecture
config and tokenizer come from a local folder instead (``tokenizer``), the
number of labels from the checkpoint, and the weights are loaded with
``torch.load(weights_only=True)`` (no pickled code runs). The score is
sigmoid(logit) of the toxicity class, as Detoxify computes it.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, Sequence

from ...errors import DetoxflowError
from .base import Scorer

log = logging.getLogger(__name__)

RELEASE = "https://github.com/unitaryai/detoxify/releases/download/"
VARIANTS: dict[str, dict[str, str]] = {
    "original": {
        "url": RELEASE + "v0.1-alpha/toxic_original-c1212f89.ckpt",
        "model_name": "BertForSequenceClassification",
        "base": "bert-base-uncased",
    },
    "unbiased": {
        "url": RELEASE + "v0.3-alpha/toxic_debiased-c7548aa0.ckpt",
        "model_name": "RobertaForSequenceClassification",
        "base": "roberta-base",
    },
    "multilingual": {
        "url": RELEASE + "v0.4-alpha/multilingual_debiased-0b549669.ckpt",
        "model_name": "XLMRobertaForSequenceClassification",
        "base": "xlm-roberta-base",
    },
}
# Detoxify's own renaming of class names between its models
_RENAME = {"toxic": "toxicity", "identity_hate": "identity_attack", "severe_toxic": "severe_toxicity"}
# state-dict entries that older transformers versions saved and newer ones drop
_HARMLESS_UNEXPECTED = ("position_ids", "pooler.")


def _key(name: str) -> str:
    return f"evaluation.toxicity.detoxify.{name}"


def load_detoxify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a Detoxify .ckpt safely and check its layout."""
    import torch

    p = Path(path)
    try:
        loaded = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DetoxflowError(
            f"{_key('checkpoint')} = {p}: could not be read as a weights-only checkpoint ({first}). "
            f"If it holds more than tensors and plain dicts, convert it once on a trusted machine: "
            f"ck = torch.load(path, weights_only=False); "
            f"torch.save({{'state_dict': ck['state_dict'], 'config': ck['config']}}, out) (see docs/scoring.md)"
        ) from None
    if not isinstance(loaded, dict) or "state_dict" not in loaded or "config" not in loaded:
        raise DetoxflowError(
            f"{_key('checkpoint')} = {p}: not a Detoxify checkpoint (needs the keys 'state_dict' and 'config')"
        )
    try:
        args = loaded["config"]["arch"]["args"]
        classes = list(loaded["config"]["dataset"]["args"]["classes"])
        model_name = args["model_name"]
        num_classes = int(args["num_classes"])
    except (KeyError, TypeError) as exc:
        raise DetoxflowError(
            f"{_key('checkpoint')} = {p}: Detoxify config lacks {exc} "
            f"(expected config.arch.args.{{model_name,num_classes}} and config.dataset.args.classes)"
        ) from None
    if num_classes < len(classes):
        # Detoxify reads output i as classes[i]; more names than outputs cannot be scored.
        # More outputs than names is normal: unbiased and multilingual have 16 outputs
        # (the main classes, then identity subgroups) and name only the first ones.
        raise DetoxflowError(
            f"{_key('checkpoint')} = {p}: config.arch.args.num_classes={num_classes} but "
            f"config.dataset.args.classes names {len(classes)} classes; a Detoxify checkpoint has at "
            f"least one output per class name"
        )
    return {"state_dict": loaded["state_dict"], "args": dict(args), "classes": classes,
            "model_name": model_name, "num_classes": num_classes}


def toxicity_index(classes: Sequence[str]) -> int:
    """The output Detoxify reports as "toxicity": the index of "toxic" / "toxicity" in
    the class list (output i is classes[i]; outputs past the list are not reported).

    Detoxify fills its result dict in class order, so where a renamed name occurs
    twice the last one wins; so it does here.
    """
    names = [_RENAME.get(c, c) for c in classes]
    if "toxicity" not in names:
        raise DetoxflowError(f"the Detoxify checkpoint has no 'toxic'/'toxicity' class among {list(classes)}")
    return len(names) - 1 - names[::-1].index("toxicity")


class DetoxifyScorer(Scorer):
    name = "detoxify"
    sort_by_length = True
    option_keys = ("variant", "checkpoint", "tokenizer", "device")

    def __init__(
        self,
        *,
        checkpoint: str | None = None,
        tokenizer: str | None = None,
        variant: str = "original",
        device: str = "auto",
        batch_size: int = 64,
        progress: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, progress=progress)
        if variant not in VARIANTS:
            raise DetoxflowError(f"{_key('variant')}: unknown '{variant}'; use one of {', '.join(VARIANTS)}")
        info = VARIANTS[variant]
        if not checkpoint:
            raise DetoxflowError(
                f"detoxify needs {_key('checkpoint')}: a local .ckpt from the Detoxify release "
                f"(variant '{variant}': {info['url']}); download it on a machine with internet and "
                f"copy it here (docs/scoring.md), or use scorer: profanity-check"
            )
        if not Path(checkpoint).is_file():
            raise DetoxflowError(
                f"{_key('checkpoint')} = {checkpoint}: file not found (a local .ckpt from the Detoxify "
                f"release, variant '{variant}': {info['url']})"
            )
        if not tokenizer:
            raise DetoxflowError(
                f"detoxify needs {_key('tokenizer')}: a local folder with the Hugging Face tokenizer files "
                f"and config.json of '{info['base']}' (docs/scoring.md shows how to fetch it)"
            )
        folder = Path(tokenizer)
        if not folder.is_dir() or not (folder / "config.json").is_file():
            raise DetoxflowError(
                f"{_key('tokenizer')} = {tokenizer}: not a folder with config.json and tokenizer files "
                f"of '{info['base']}' (docs/scoring.md shows how to fetch it)"
            )

        import torch
        import transformers

        from ...runtime import resolve_device
        from ._transformers import effective_max_length, empty_substitute, prepare_tokenizer

        ck = load_detoxify_checkpoint(checkpoint)
        model_name = ck["model_name"]
        if model_name != info["model_name"]:
            raise DetoxflowError(
                f"{_key('checkpoint')} = {checkpoint} holds a {model_name}, but {_key('variant')} is "
                f"'{variant}' ({info['model_name']}); set the variant that matches the checkpoint"
            )
        model_class = getattr(transformers, model_name, None)
        if model_class is None or not model_name.endswith("ForSequenceClassification"):
            raise DetoxflowError(f"{_key('checkpoint')}: unsupported model class '{model_name}'")
        self.classes = ck["classes"]
        self.class_index = toxicity_index(self.classes)
        self.variant = variant

        try:
            config = model_class.config_class.from_pretrained(folder, num_labels=ck["num_classes"])
            self.tokenizer = self._load_tokenizer(transformers, ck["args"].get("tokenizer_name"), folder)
        except (OSError, ValueError) as exc:
            raise DetoxflowError(
                f"{_key('tokenizer')} = {tokenizer}: could not load config/tokenizer: {str(exc).splitlines()[0]}"
            ) from None
        state_dict = ck["state_dict"]
        if state_dict and all(k.startswith("model.") for k in state_dict):
            # a raw Lightning checkpoint keeps the module under "model."
            state_dict = {k[len("model."):]: v for k, v in state_dict.items()}
        try:
            model, info_load = model_class.from_pretrained(
                None, config=config, state_dict=state_dict, output_loading_info=True
            )
        except (RuntimeError, ValueError) as exc:
            raise DetoxflowError(
                f"{_key('checkpoint')} = {checkpoint}: weights do not fit the config in {tokenizer} "
                f"(is it the '{info['base']}' config?): {str(exc).splitlines()[0]}"
            ) from None
        missing = sorted(info_load.get("missing_keys", []))
        mismatched = list(info_load.get("mismatched_keys", []))
        unexpected = [k for k in info_load.get("unexpected_keys", [])
                      if not any(h in k for h in _HARMLESS_UNEXPECTED)]
        if missing or mismatched:
            raise DetoxflowError(
                f"{_key('checkpoint')} = {checkpoint}: weights do not fit the config in {tokenizer} "
                f"(is it the '{info['base']}' config?): missing {missing[:5]}, mismatched {mismatched[:5]}"
            )
        if unexpected:
            log.warning("detoxify: ignoring %d unexpected checkpoint entries, e.g. %s", len(unexpected), unexpected[:3])
        self.device = resolve_device(device)
        self.model = model.float().to(self.device).eval()
        prepare_tokenizer(self.tokenizer, self.model)
        # as Detoxify: the tokenizer's limit (512 for all three base models)
        self.max_length = effective_max_length(self.tokenizer, None) or 512
        self._empty_as = empty_substitute(self.tokenizer)
        self._torch = torch
        log.info("detoxify (%s): %s, toxicity = class %d of %s, on %s", variant, checkpoint,
                 self.class_index, self.classes, self.device)

    @staticmethod
    def _load_tokenizer(transformers, tokenizer_name: str | None, folder: Path):
        cls = getattr(transformers, tokenizer_name, None) if tokenizer_name else None
        if cls is not None and hasattr(cls, "from_pretrained"):
            try:
                return cls.from_pretrained(folder, local_files_only=True)
            except (OSError, ValueError, TypeError):
                pass
        return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)

    def _score_batch(self, texts: Sequence[str]) -> Sequence[float]:
        from ._transformers import classify_logits

        logits = classify_logits(self.model, self.tokenizer, texts, max_length=self.max_length,
                                 device=self.device, empty_as=self._empty_as)
        return self._torch.sigmoid(logits[:, self.class_index]).tolist()

    def close(self) -> None:
        model = getattr(self, "model", None)
        if model is not None:
            self.model = None
            if self.device.type == "cuda":
                del model
                self._torch.cuda.empty_cache()
