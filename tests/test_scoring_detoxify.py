"""The detoxify scorer against the detoxify package itself, on fabricated
Detoxify-format checkpoints (tiny random BERT / RoBERTa / XLM-R + tiny tokenizers, all local)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import OrderedDict

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


# -- the three release layouts ------------------------------------------------------------
# What the release .ckpt files hold (detoxify's convert_weights.py: the Lightning state dict
# without its "model." prefix, and the training config), with the configs of the released
# models: `original` names its 6 outputs; `unbiased` has 16 outputs (7 named classes, then
# 9 identity subgroups listed under identity_classes); `multilingual` has 16 outputs and
# names only the first ("toxic").
UNBIASED_CLASSES = ["toxicity", "severe_toxicity", "obscene", "identity_attack", "insult", "threat",
                    "sexual_explicit"]
IDENTITY_CLASSES = ["male", "female", "homosexual_gay_or_lesbian", "christian", "jewish", "muslim", "black",
                    "white", "psychiatric_or_mental_illness"]
LAYOUTS = {
    # variant: (hub id in arch.args.model_type, model class, tokenizer class, num_classes, dataset.args)
    "original": ("bert-base-uncased", "BertForSequenceClassification", "BertTokenizer", 6,
                 {"classes": ORIGINAL_CLASSES}),
    "unbiased": ("roberta-base", "RobertaForSequenceClassification", "RobertaTokenizer", 16,
                 {"classes": UNBIASED_CLASSES, "identity_classes": IDENTITY_CLASSES, "loss_weight": 0.75}),
    "multilingual": ("xlm-roberta-base", "XLMRobertaForSequenceClassification", "XLMRobertaTokenizer", 16,
                     {"classes": ["toxic"]}),
}
MAX_TOKENS = 64  # the tiny tokenizers' model_max_length (512 in the real ones)
LAYOUT_TEXTS = ["you are an idiot !", "hello world", "", "i love this movie , it is good .",
                "stupid people " * 30, "the", "bad bad bad", "ça, c'est nul !", "you are a nice idiot"] * 2


def _tiny_tokenizer(variant: str):
    import transformers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # the ids RoBERTa / XLM-R use
    words = WORDS[5:]
    if variant == "original":
        return transformers.BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}, model_max_length=MAX_TOKENS)
    if variant == "unbiased":  # byte-level BPE over single bytes
        vocab = {t: i for i, t in enumerate(specials + list(bytes_to_unicode().values()))}
        return transformers.RobertaTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)
    pieces = [(t, 0.0) for t in specials] + [("\u2581" + w, -2.0) for w in words]
    pieces += [(c, -6.0) for c in "abcdefghijklmnopqrstuvwxyz,.!'\u2581"]
    return transformers.XLMRobertaTokenizer(vocab=pieces, model_max_length=MAX_TOKENS)


def _write_release_checkpoint(variant: str, root, seed: int):
    """(checkpoint, base-model folder as downloaded) of one variant."""
    import transformers

    hub_id, model_name, tokenizer_name, num_classes, dataset_args = LAYOUTS[variant]
    tokenizer = _tiny_tokenizer(variant)
    model_class = getattr(transformers, model_name)
    shape = dict(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=MAX_TOKENS)
    if variant != "original":  # RoBERTa positions start after the padding index
        shape.update(max_position_embeddings=MAX_TOKENS + 2, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    base = root / f"{variant}-base"
    model_class.config_class(**shape).save_pretrained(base)  # the hub's config: no label count
    tokenizer.save_pretrained(base)

    torch.manual_seed(seed)
    model = model_class(model_class.config_class(**shape, num_labels=num_classes, initializer_range=0.5)).eval()
    state = OrderedDict(model.state_dict())
    prefix = model.base_model_prefix
    # buffers / layers that the transformers of the release (3.x) saved and today's drop
    state[f"{prefix}.embeddings.position_ids"] = torch.arange(shape["max_position_embeddings"]).unsqueeze(0)
    if variant != "original":
        state[f"{prefix}.pooler.dense.weight"] = torch.zeros(16, 16)
        state[f"{prefix}.pooler.dense.bias"] = torch.zeros(16)
    config = {
        "name": f"Jigsaw_{variant}", "n_gpu": 1, "batch_size": 10, "accumulate_grad_batches": 3,
        "arch": {"type": variant.upper(), "args": {"num_classes": num_classes, "model_type": hub_id,
                                                   "model_name": model_name, "tokenizer_name": tokenizer_name}},
        "dataset": {"type": "JigsawData", "args": {"train_csv_file": "train.csv", "test_csv_file": "test.csv",
                                                   "val_fraction": None, "create_val_set": False, **dataset_args}},
        "optimizer": {"type": "Adam", "args": {"lr": 3e-5, "weight_decay": 3e-6, "amsgrad": True}},
    }
    ckpt = root / f"{variant}.ckpt"
    torch.save({"state_dict": state, "config": config}, ckpt)
    return ckpt, base


def _hub_cache_with(folders: dict, cache):
    """A Hugging Face hub cache (the layout huggingface_hub writes) holding ``{hub id: folder}``,
    so the detoxify package, which fetches config and tokenizer by hub id, runs offline."""
    revision = "0" * 40
    for hub_id, folder in folders.items():
        repo = cache / f"models--{hub_id}"
        shutil.copytree(folder, repo / "snapshots" / revision)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(revision)
    return cache


REFERENCE_SCRIPT = """
import json, sys
from detoxify import Detoxify
texts = json.loads(sys.argv[2])
out = {}
for variant, ckpt in json.loads(sys.argv[1]).items():
    out[variant] = Detoxify(checkpoint=ckpt, device="cpu").predict(texts)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def release_layouts(tmp_path_factory):
    """{variant: (checkpoint, base folder)} and what the detoxify package predicts from them."""
    root = tmp_path_factory.mktemp("detoxify-releases")
    files = {v: _write_release_checkpoint(v, root, seed=i) for i, v in enumerate(LAYOUTS)}
    cache = _hub_cache_with({LAYOUTS[v][0]: base for v, (_, base) in files.items()}, root / "hub")
    # the package's own code path, unchanged: Detoxify(checkpoint=...) on the very same files,
    # in a fresh interpreter (hub settings are read at import)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(
        [sys.executable, "-c", REFERENCE_SCRIPT, json.dumps({v: str(c) for v, (c, _) in files.items()}),
         json.dumps(LAYOUT_TEXTS)], capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = json.loads(proc.stdout.strip().splitlines()[-1])
    return files, reference


@pytest.mark.parametrize("variant", list(LAYOUTS))
def test_release_layouts_score_as_the_detoxify_package(variant, release_layouts):
    files, reference = release_layouts
    ckpt, base = files[variant]
    expected = reference[variant]["toxicity"]
    # the package reports the named classes only: 16 outputs but 7 (unbiased) / 1 (multilingual) names
    assert len(reference[variant]) == len(LAYOUTS[variant][4]["classes"])
    assert max(expected) - min(expected) > 0.05  # the random model does discriminate between texts
    with build_scorer("detoxify", {"variant": variant, "checkpoint": str(ckpt), "tokenizer": str(base),
                                   "device": "cpu"}, batch_size=4, progress=False) as scorer:
        assert scorer.class_index == 0
        assert scorer.model.config.num_labels == LAYOUTS[variant][3]
        scores = scorer.score(LAYOUT_TEXTS)
    assert scores == pytest.approx(expected, abs=1e-5)


def test_release_checkpoints_load_weights_only(release_layouts):
    files, _ = release_layouts
    for ckpt, _ in files.values():
        loaded = torch.load(ckpt, weights_only=True)
        assert set(loaded) == {"state_dict", "config"}


def test_more_class_names_than_outputs_is_refused(tmp_path, release_layouts):
    files, _ = release_layouts
    ckpt, base = files["unbiased"]
    loaded = torch.load(ckpt, weights_only=True)
    loaded["config"]["arch"]["args"]["num_classes"] = 5  # 7 names
    bad = tmp_path / "bad.ckpt"
    torch.save(loaded, bad)
    with pytest.raises(DetoxflowError, match=r"num_classes=5 but config\.dataset\.args\.classes names 7"):
        build_scorer("detoxify", {"variant": "unbiased", "checkpoint": str(bad), "tokenizer": str(base)})
