"""The hf-classifier scorer against a direct computation on tiny random classifiers."""

from __future__ import annotations

import functools

import pytest
import torch

from detoxflow.errors import DetoxflowError
from detoxflow.evaluation.scoring import build_scorer

WORDS = "[PAD] [UNK] [CLS] [SEP] [MASK] you are a an nice stupid idiot hello world the good bad , . !".split()
TEXTS = ["you are an idiot !", "", "hello world", "the good , the bad", "stupid " * 40, "nice", "a an the"] * 2


@pytest.fixture(scope="module")
def bert_classifier(tmp_path_factory):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder = tmp_path_factory.mktemp("hfc") / "bert3"
    torch.manual_seed(7)
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=128, num_labels=3, initializer_range=0.5)
    BertForSequenceClassification(cfg).eval().save_pretrained(folder)
    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2_classifier(tmp_path_factory, shared_data):
    """A GPT-2 classifier whose tokenizer has no pad token (the scorer must cope)."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2Tokenizer

    folder = tmp_path_factory.mktemp("hfc") / "gpt2"
    tok = GPT2Tokenizer.from_pretrained(str(shared_data / "gpt2_tokenizer"))
    assert tok.pad_token is None
    torch.manual_seed(11)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=2, n_head=2, num_labels=2,
                     initializer_range=0.5)
    GPT2ForSequenceClassification(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@functools.lru_cache(maxsize=None)
def _load(folder):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModelForSequenceClassification.from_pretrained(folder).eval()


def _direct(folder, texts, label, activation, max_length=None):
    """One text at a time (no padding), plain transformers."""
    tok, model = _load(str(folder))
    out = []
    with torch.no_grad():
        for t in texts:
            enc = tok(t or " ", return_tensors="pt", truncation=max_length is not None, max_length=max_length)
            logits = model(**enc).logits[0]
            p = torch.softmax(logits, -1)[label] if activation == "softmax" else torch.sigmoid(logits[label])
            out.append(p.item())
    return out


@pytest.mark.parametrize("activation,label", [("softmax", 2), ("sigmoid", 0)])
def test_bert_classifier_matches_direct_computation(bert_classifier, activation, label):
    expected = _direct(bert_classifier, TEXTS, label, activation)
    assert max(expected) - min(expected) > 0.05  # the random model does discriminate
    with build_scorer("hf-classifier", {"path": str(bert_classifier), "toxic_label": label,
                                        "activation": activation, "max_length": 512, "device": "cpu"},
                      batch_size=4, progress=False) as scorer:
        scores = scorer.score(TEXTS)
    assert scores == pytest.approx(expected, abs=1e-5)


def test_gpt2_classifier_without_pad_token_and_truncation(gpt2_classifier):
    texts = ["you are an idiot", "", "hello there my friend, how are you doing today?" * 3, "ok"]
    opts = {"path": str(gpt2_classifier), "toxic_label": 1, "activation": "softmax", "device": "cpu"}
    full = build_scorer("hf-classifier", {**opts, "max_length": 512}, batch_size=3, progress=False).score(texts)
    assert full == pytest.approx(_direct(gpt2_classifier, texts, 1, "softmax"), abs=1e-5)
    cut = build_scorer("hf-classifier", {**opts, "max_length": 4}, batch_size=3, progress=False).score(texts)
    assert cut == pytest.approx(_direct(gpt2_classifier, texts, 1, "softmax", max_length=4), abs=1e-5)
    assert cut[2] != pytest.approx(full[2], abs=1e-4)  # truncation did change the long text's score
    assert cut[0] == pytest.approx(full[0], abs=1e-5)  # ... and not the short ones'
    # the tokenizer has no limit of its own: the model's 128 positions cap max_length
    long = ["stupid idiot " * 150, "hello"]
    capped = build_scorer("hf-classifier", {**opts, "max_length": 512}, progress=False).score(long)
    assert capped == pytest.approx(_direct(gpt2_classifier, long, 1, "softmax", max_length=128), abs=1e-5)


def test_configuration_errors(bert_classifier, tmp_path):
    with pytest.raises(DetoxflowError, match=r"hf-classifier needs evaluation\.toxicity\.hf_classifier\.path"):
        build_scorer("hf-classifier", {"path": None})
    with pytest.raises(DetoxflowError, match="no config.json"):
        build_scorer("hf-classifier", {"path": str(tmp_path)})
    with pytest.raises(DetoxflowError, match=r"toxic_label = 3.*3 output"):
        build_scorer("hf-classifier", {"path": str(bert_classifier), "toxic_label": 3})
    with pytest.raises(DetoxflowError, match="activation"):
        build_scorer("hf-classifier", {"path": str(bert_classifier), "activation": "relu"})


def test_single_logit_needs_sigmoid(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                     intermediate_size=8, num_labels=1)
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "one")
    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(tmp_path / "one")
    with pytest.raises(DetoxflowError, match="use sigmoid"):
        build_scorer("hf-classifier", {"path": str(tmp_path / "one"), "toxic_label": 0})
    scorer = build_scorer("hf-classifier", {"path": str(tmp_path / "one"), "toxic_label": 0,
                                            "activation": "sigmoid", "device": "cpu"}, progress=False)
    assert scorer.score(["hello", ""]) == pytest.approx(
        _direct(tmp_path / "one", ["hello", ""], 0, "sigmoid"), abs=1e-5)
