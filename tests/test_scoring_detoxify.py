"""The detoxify scorer against the detoxify package itself, on a fabricated
Detoxify-format checkpoint (tiny random BERT + tiny tokenizer, all local)."""

from __future__ import annotations

import pytest
import torch

from detoxflow.errors import DetoxflowError
from detoxflow.evaluation.scoring import build_scorer

WORDS = ("[PAD] [UNK] [CLS] [SEP] [MASK] you are a an nice stupid idiot hello world the good bad "
         "people i hate love this movie is , . !").split()
ORIGINAL_CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
TEXTS = ["you are an idiot !", "hello world", "", "i love this movie , it is good .",
         "stupid people " * 30, "the", "bad bad bad", "you are a nice idiot"] * 3


class _NotATensor:
    """A pickled object that weights_only loading must refuse."""


def _bert_config(num_labels=None, **extra):
    from transformers import BertConfig

    kw = dict(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=32, max_position_embeddings=128, **extra)
    if num_labels is not None:
        kw["num_labels"] = num_labels
    return BertConfig(**kw)


@pytest.fixture(scope="module")
def detoxify_files(tmp_path_factory):
    """(checkpoint for the detoxify package, checkpoint as released, folder with full config,
    folder with a plain base config) -- the two checkpoints hold the same weights."""
    from transformers import BertForSequenceClassification, BertTokenizer

    root = tmp_path_factory.mktemp("detoxify")
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}, model_max_length=64)
    # a folder as Detoxify's offline mode expects it (config with the checkpoint's label count) ...
    full = root / "hf_full"
    tokenizer.save_pretrained(full)
    _bert_config(num_labels=len(ORIGINAL_CLASSES)).save_pretrained(full)
    # ... and one as a user gets it by downloading bert-base-uncased (no label count)
    plain = root / "hf_plain"
    tokenizer.save_pretrained(plain)
    _bert_config().save_pretrained(plain)

    torch.manual_seed(3)
    # a wide init spreads the scores (the default init gives nearly constant logits)
    model = BertForSequenceClassification(_bert_config(num_labels=len(ORIGINAL_CLASSES),
                                                       initializer_range=0.5)).eval()
    # toxicity deliberately NOT at index 0, to check the class lookup
    classes = ["severe_toxic", "obscene", "toxic", "threat", "insult", "identity_hate"]
    state = model.state_dict()
    # older transformers saved this buffer; real release checkpoints contain it
    state["bert.embeddings.position_ids"] = torch.arange(128).unsqueeze(0)

    def ckpt(model_type, name):
        path = root / name
        torch.save({
            "state_dict": state,
            "config": {
                "name": "Jigsaw_BERT",
                "arch": {"type": "BERT", "args": {"model_type": model_type, "model_name":
                         "BertForSequenceClassification", "tokenizer_name": "BertTokenizer",
                         "num_classes": len(classes)}},
                "dataset": {"type": "JigsawData", "args": {"classes": classes}},
            },
        }, path)
        return path

    # The detoxify package builds its config from arch.args.model_type even in offline
    # mode, so for it model_type must be a local folder; release files say "bert-base-uncased".
    return ckpt(str(full), "for_package.ckpt"), ckpt("bert-base-uncased", "as_released.ckpt"), full, plain


def test_scores_equal_the_detoxify_package(detoxify_files):
    from detoxify import Detoxify

    for_package, as_released, full, plain = detoxify_files
    reference = Detoxify("original", checkpoint=str(for_package), huggingface_config_path=str(full))
    expected = reference.predict(TEXTS)["toxicity"]
    assert len(set(round(v, 3) for v in expected)) >= 6 and max(expected) - min(expected) > 0.1  # the random model does discriminate

    # the released layout (hub id in model_type, no network) and a plain base-model config folder
    for folder in (full, plain):
        with build_scorer("detoxify", {"variant": "original", "checkpoint": str(as_released),
                                       "tokenizer": str(folder), "device": "cpu"},
                          batch_size=5, progress=False) as scorer:
            assert scorer.class_index == 2
            scores = scorer.score(TEXTS)
        assert scores == pytest.approx(expected, abs=1e-5)


def test_scores_equal_a_direct_forward_pass(detoxify_files):
    """Independent of the detoxify package: one text at a time, no padding."""
    from transformers import BertForSequenceClassification, BertTokenizer

    _, as_released, full, _ = detoxify_files
    ck = torch.load(as_released, weights_only=True)
    model = BertForSequenceClassification(_bert_config(num_labels=6)).eval()
    state = {k: v for k, v in ck["state_dict"].items() if "position_ids" not in k}
    model.load_state_dict(state)
    tok = BertTokenizer.from_pretrained(full)
    with torch.no_grad():
        expected = [torch.sigmoid(model(**tok(t, return_tensors="pt", truncation=True)).logits[0, 2]).item()
                    for t in TEXTS]
    scorer = build_scorer("detoxify", {"checkpoint": str(as_released), "tokenizer": str(full), "device": "cpu"},
                          batch_size=64, progress=False)
    assert scorer.score(TEXTS) == pytest.approx(expected, abs=1e-5)
    scorer.close()
    scorer.close()  # idempotent


def test_missing_checkpoint_or_tokenizer_is_explained(detoxify_files, tmp_path):
    _, as_released, full, _ = detoxify_files
    with pytest.raises(DetoxflowError, match=r"detoxify needs evaluation\.toxicity\.detoxify\.checkpoint.*"
                                             r"Detoxify release.*toxic_original"):
        build_scorer("detoxify", {"checkpoint": None, "tokenizer": str(full)})
    with pytest.raises(DetoxflowError, match="file not found"):
        build_scorer("detoxify", {"checkpoint": str(tmp_path / "nope.ckpt"), "tokenizer": str(full)})
    with pytest.raises(DetoxflowError, match=r"detoxify needs evaluation\.toxicity\.detoxify\.tokenizer.*bert-base"):
        build_scorer("detoxify", {"checkpoint": str(as_released)})
    with pytest.raises(DetoxflowError, match="roberta-base"):
        build_scorer("detoxify", {"variant": "unbiased", "checkpoint": str(as_released), "tokenizer": str(tmp_path)})


def test_variant_must_match_checkpoint(detoxify_files):
    _, as_released, full, _ = detoxify_files
    with pytest.raises(DetoxflowError, match="holds a BertForSequenceClassification.*'unbiased'"):
        build_scorer("detoxify", {"variant": "unbiased", "checkpoint": str(as_released), "tokenizer": str(full)})


def test_unsafe_or_foreign_checkpoints_are_refused(tmp_path, detoxify_files):
    _, _, full, _ = detoxify_files

    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "config": {}, "hook": _NotATensor()}, pickled)
    with pytest.raises(DetoxflowError, match="weights-only"):
        build_scorer("detoxify", {"checkpoint": str(pickled), "tokenizer": str(full)})
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(DetoxflowError, match="not a Detoxify checkpoint"):
        build_scorer("detoxify", {"checkpoint": str(foreign), "tokenizer": str(full)})


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path, detoxify_files):
    _, as_released, full, _ = detoxify_files
    wrong = tmp_path / "wrong_cfg"
    import shutil

    shutil.copytree(full, wrong)
    _bert_config(num_labels=6).__class__(**{**_bert_config(num_labels=6).to_dict(), "hidden_size": 32,
                                             "intermediate_size": 64}).save_pretrained(wrong)
    with pytest.raises(DetoxflowError, match="do not fit the config"):
        build_scorer("detoxify", {"checkpoint": str(as_released), "tokenizer": str(wrong)})
