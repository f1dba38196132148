"""Shared fixtures: the shared data folder and tiny random models (GPT-2 and Llama shape).

Tiny models use the real GPT-2 tokenizer from ../shared/data/gpt2_tokenizer and
are saved as Hugging Face folders exactly like the pipeline's own model folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DETOXFLOW_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data folder not found at {SHARED_DATA} (set DETOXFLOW_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def gpt2_tokenizer(shared_data):
    from transformers import GPT2Tokenizer

    tok = GPT2Tokenizer.from_pretrained(str(shared_data / "gpt2_tokenizer"))
    tok.pad_token = tok.eos_token
    return tok


def judge_settings(kind: str = "offline", **block) -> dict:
    """``safeedit.judge`` as the workflow passes it: the kind and its block, schema defaults filled."""
    from detoxflow.config import section_defaults

    judge = section_defaults("safeedit")["judge"]
    return {"kind": kind, kind: {**judge[kind], **block}}


def make_tiny_model(kind: str, out_dir: Path, tokenizer, seed: int = 0) -> Path:
    """Build a tiny random causal LM of the given family and save it as an HF folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from detoxflow.models import save_model_folder

    torch.manual_seed(seed)
    vocab = len(tokenizer)
    if kind == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_positions=256, n_embd=32, n_layer=2, n_head=2,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.eos_token_id)
        model = GPT2LMHeadModel(cfg)
    elif kind == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(kind)
    model.eval()
    return save_model_folder(model, tokenizer, out_dir, method="base", params={"source": f"tiny-{kind}"})


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, gpt2_tokenizer) -> Path:
    return make_tiny_model("gpt2", tmp_path_factory.mktemp("models") / "tiny-gpt2", gpt2_tokenizer)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, gpt2_tokenizer) -> Path:
    return make_tiny_model("llama", tmp_path_factory.mktemp("models") / "tiny-llama", gpt2_tokenizer)
