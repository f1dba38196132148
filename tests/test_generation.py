"""The generation engine: greedy output identical to Transformers' ``generate``, whatever the batching;
EOS handling; prompts longer than the context cut from the left."""

from __future__ import annotations

import pytest
import torch

from detoxflow.errors import DetoxflowError
from detoxflow.generation import generate_continuations, generate_token_ids, plan_batches
from detoxflow.models import load_model, load_tokenizer

PROMPTS = [
    "Hello",
    "The weather today in the city of London is",
    "I think that",
    "One two three four five six seven eight nine ten eleven twelve",
    "",
]


def hf_greedy(model, tok, prompt: str, new: int) -> list[int]:
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:
        ids = torch.tensor([[tok.bos_token_id]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("budget", [1, 60, 10**6])
def test_greedy_equals_hf_generate_alone(family, budget, tiny_gpt2_dir, tiny_llama_dir):
    folder = {"gpt2": tiny_gpt2_dir, "llama": tiny_llama_dir}[family]
    model, tok = load_model(folder, device="cpu"), load_tokenizer(folder)
    got = generate_token_ids(model, tok, PROMPTS, max_new_tokens=12, batch_tokens=budget, progress=False)
    assert [len(s) for s in got.ids] == [1] * len(PROMPTS)
    for prompt, (ids,) in zip(PROMPTS, got.ids):
        assert ids == hf_greedy(model, tok, prompt, 12)
    texts = generate_continuations(model, tok, PROMPTS, max_new_tokens=12, batch_tokens=budget)
    assert texts == [[tok.decode(s[0], skip_special_tokens=True)] for s in got.ids]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_equals_hf_generate_on_a_left_padded_batch(family, tiny_gpt2_dir, tiny_llama_dir):
    folder = {"gpt2": tiny_gpt2_dir, "llama": tiny_llama_dir}[family]
    model, tok = load_model(folder, device="cpu"), load_tokenizer(folder)
    prompts = PROMPTS[:4]
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
    ref = out[:, enc["input_ids"].shape[1]:].tolist()
    got = generate_token_ids(model, tok, prompts, max_new_tokens=10, num_return_sequences=3, progress=False)
    for r, samples in zip(ref, got.ids):
        assert samples == [r, r, r]  # greedy: the k samples are the same sequence


def test_plan_batches_respects_the_budget_and_covers_every_prompt():
    lengths = [5, 40, 12, 7, 40, 3, 90]
    for budget in (1, 100, 250, 10**6):
        batches = plan_batches(lengths, k=3, max_new_tokens=10, batch_tokens=budget)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        for b in batches:
            cost = len(b) * (max(lengths[i] for i in b) + 3 * 10)
            assert cost <= budget or len(b) == 1
    assert len(plan_batches(lengths, k=3, max_new_tokens=10, batch_tokens=10**6)) == 1
    assert all(len(b) == 2 for b in plan_batches([1] * 6, k=3, max_new_tokens=1, batch_tokens=10**6, batch_size=6))


def _force_token(model, token_id: int, from_step: int):
    """Bias the vocabulary projection towards ``token_id`` from the ``from_step``-th call on."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        calls["n"] += 1
        if calls["n"] > from_step:
            return output + torch.nn.functional.one_hot(torch.tensor(token_id), output.shape[-1]) * 100
        return output

    return model.lm_head.register_forward_hook(hook)


def test_special_tokens_are_dropped(tiny_gpt2_dir):
    model, tok = load_model(tiny_gpt2_dir, device="cpu"), load_tokenizer(tiny_gpt2_dir)
    handle = _force_token(model, tok.eos_token_id, 0)
    try:
        out = generate_continuations(model, tok, ["Hello there"], max_new_tokens=5)
        ids = generate_token_ids(model, tok, ["Hello there"], max_new_tokens=5, progress=False).ids
    finally:
        handle.remove()
    assert out == [[""]]
    assert ids == [[[tok.eos_token_id]]]  # every sequence finished at once: decoding stopped after one step


def test_eos_mid_sequence_pads_and_stops_early(tiny_gpt2_dir):
    model, tok = load_model(tiny_gpt2_dir, device="cpu"), load_tokenizer(tiny_gpt2_dir)
    free = generate_token_ids(model, tok, ["Hello there"], max_new_tokens=8, progress=False).ids[0][0]
    handle = _force_token(model, tok.eos_token_id, 3)  # prefill + 2 decoding steps free, then EOS
    try:
        ids = generate_token_ids(model, tok, ["Hello there"], max_new_tokens=8, progress=False).ids[0][0]
    finally:
        handle.remove()
    handle = _force_token(model, tok.eos_token_id, 3)
    try:
        text = generate_continuations(model, tok, ["Hello there"], max_new_tokens=8)[0][0]
    finally:
        handle.remove()
    assert ids == free[:3] + [tok.eos_token_id]  # stopped at EOS, not after 8 tokens
    assert text == tok.decode(free[:3])


def test_a_finished_sequence_does_not_disturb_the_others(tiny_gpt2_dir):
    """Two prompts; one ends at once: its row is masked (pad tokens, dropped) while the other goes on."""
    model, tok = load_model(tiny_gpt2_dir, device="cpu"), load_tokenizer(tiny_gpt2_dir)
    eos = tok.eos_token_id
    first_rows = {}

    def hook(module, inputs, output):  # the prefill row of "A" (the shorter prompt, row 1) emits EOS
        if not first_rows:
            first_rows["done"] = True
            bias = torch.zeros_like(output)
            bias[1, -1, eos] = 100
            return output + bias
        return output

    handle = model.lm_head.register_forward_hook(hook)
    try:
        got = generate_token_ids(model, tok, ["The weather today in London", "A"], max_new_tokens=5,
                                 progress=False).ids
    finally:
        handle.remove()
    assert got[1][0] == [eos]
    assert got[0][0] == hf_greedy(model, tok, "The weather today in London", 5)


@pytest.fixture(scope="module")
def short_gpt2_dir(tmp_path_factory, gpt2_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    from detoxflow.models import save_model_folder

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(gpt2_tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=gpt2_tokenizer.bos_token_id, eos_token_id=gpt2_tokenizer.eos_token_id,
                     pad_token_id=gpt2_tokenizer.eos_token_id)
    return save_model_folder(GPT2LMHeadModel(cfg).eval(), gpt2_tokenizer, tmp_path_factory.mktemp("m") / "short",
                             method="base", params={"source": "tiny-gpt2, 64 positions"})


LONG = ("word " * 20000)[:100_000]  # 100k characters: ~20k tokens, far beyond 64 positions


def test_long_prompt_is_cut_from_the_left(short_gpt2_dir):
    model, tok = load_model(short_gpt2_dir, device="cpu"), load_tokenizer(short_gpt2_dir)
    long_prompt = LONG + " and then the end of the prompt"
    stats: dict = {}
    out = generate_continuations(model, tok, [long_prompt, "Hello"], max_new_tokens=10, stats=stats)
    assert stats["truncated"] == 1 and stats["truncated_tokens"][1] == 0
    ids = tok(long_prompt)["input_ids"]
    assert stats["truncated_tokens"][0] == len(ids) - (64 - 10)
    kept = tok.decode(ids[-(64 - 10):])
    assert out[0] == [tok.decode(hf_greedy(model, tok, kept, 10), skip_special_tokens=True)]
    assert out[1] == [tok.decode(hf_greedy(model, tok, "Hello", 10), skip_special_tokens=True)]


def test_max_new_tokens_beyond_the_context_is_a_clear_error(short_gpt2_dir):
    model, tok = load_model(short_gpt2_dir, device="cpu"), load_tokenizer(short_gpt2_dir)
    with pytest.raises(DetoxflowError, match=r"64 positions.*max_new_tokens"):
        generate_continuations(model, tok, ["Hello"], max_new_tokens=64)


def test_safeedit_responses_survive_a_long_prompt(short_gpt2_dir):
    from detoxflow.evaluation.safeedit.responses import fill_responses

    model, tok = load_model(short_gpt2_dir, device="cpu"), load_tokenizer(short_gpt2_dir)
    rows = [{"id": 0, "kind": "adversarial", "prompt": LONG + " Reply:"}, {"id": 1, "kind": "bare", "prompt": "Hi"}]
    stats = fill_responses(model, tok, rows, max_new_tokens=20, batch_tokens=4096)
    assert stats["generated"] == 2 and stats["truncated"] == 1
    kept = tok.decode(tok(LONG + " Reply:")["input_ids"][-(64 - 20):])
    assert rows[0]["response"] == tok.decode(hf_greedy(model, tok, kept, 20), skip_special_tokens=True)
