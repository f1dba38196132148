"""The capability stage: the lastword task built from WikiText, lm_eval runs on tiny models checked
against log-likelihoods and greedy generations computed with the model directly, csum's ROUGE-1
against rouge-score, local copies, the columns, the errors, and the task names of the presets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from detoxflow.config import complete_section, load_config
from detoxflow.errors import DetoxflowError
from detoxflow.evaluation.capability.harness import evaluate_tasks, flatten_results
from detoxflow.evaluation.capability.lastword import build_lastword_rows, is_heading, sentence_end_targets
from detoxflow.evaluation.capability.rouge import process_results_factory, rouge1
from detoxflow.evaluation.capability.tasks import PROJECT_TASKS, known_names, plan_tasks
from detoxflow.models import load_model, load_tokenizer

from conftest import REPO


@pytest.fixture(scope="module")
def wikitext_paragraphs(shared_data) -> list[str]:
    from detoxflow.data.recipes import load_recipe

    rows = load_recipe("wikitext", {"format": "wikitext", "local": {"path": "wikitext-2/wiki.test.raw"}},
                       shared_data)
    return [r["text"] for r in rows]


def settings(**values) -> dict:
    return complete_section("capability", values)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- the lastword task's examples -------------------------------------------------------------------

def test_sentence_end_targets_and_headings():
    words = "The cat sat on the mat . Col. Mustard slept well . Then a dog came!".split()
    assert sentence_end_targets(words, 3) == [(5, "mat"), (10, "well"), (15, "came")]
    assert sentence_end_targets("He is 42 . So it is .".split(), 3) == []   # digits, and too short
    assert is_heading(" = = Career = = ") and not is_heading(" A = B holds .")


def test_lastword_rows_are_sentence_final_words_of_the_text(wikitext_paragraphs):
    kwargs = dict(n_examples=50, min_context_words=20, max_context_words=60, min_target_chars=3)
    rows = build_lastword_rows(wikitext_paragraphs, seed=1, **kwargs)
    assert len(rows) == 50
    assert rows == build_lastword_rows(wikitext_paragraphs, seed=1, **kwargs)   # seeded
    assert rows != build_lastword_rows(wikitext_paragraphs, seed=2, **kwargs)
    paragraphs = [r["id"].split(":")[0] for r in rows]
    assert len(set(paragraphs)) == 50                                             # one per paragraph
    for row in rows:
        p, i = map(int, row["id"].split(":"))
        words = wikitext_paragraphs[p].split()
        assert words[i] == row["target"] and words[i + 1] in {".", "!", "?"}   # WikiText: marks stand apart
        assert row["target"].isalpha() and len(row["target"]) >= 3
        context = row["context"].split()
        assert 20 <= len(context) <= 60 and context == words[max(0, i - 60):i]
        assert not is_heading(wikitext_paragraphs[p])
    # the whole test split has more than 1,000 usable paragraphs: the default 300 are all there
    assert len(build_lastword_rows(wikitext_paragraphs, seed=42, n_examples=10**6, min_context_words=20,
                                   max_context_words=80, min_target_chars=3)) > 1000
    with pytest.raises(DetoxflowError, match="min_context_words"):
        build_lastword_rows(["a b c"], seed=0, n_examples=1, min_context_words=5, max_context_words=4,
                            min_target_chars=3)


# -- lm_eval on tiny models, checked against the model called directly ----------------------------

def direct_loglikelihood(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """log P(continuation | context) and whether it is the greedy continuation, token by token."""
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    assert whole[:len(ctx)] == ctx
    cont = whole[len(ctx):]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
    positions = range(len(ctx) - 1, len(whole) - 1)
    ll = sum(float(logp[p, t]) for p, t in zip(positions, cont))
    greedy = all(int(logp[p].argmax()) == t for p, t in zip(positions, cont))
    return ll, greedy


def greedy_word_rows(model, tokenizer, paragraphs, n: int) -> list[dict]:
    """Rows whose target is the model's own greedy next word (so accuracy is not trivially 0)."""
    rows = []
    for text in paragraphs:
        words = text.split()
        if is_heading(text) or len(words) < 30:
            continue
        context = " ".join(words[:25])
        with torch.no_grad():
            token = int(model(torch.tensor([tokenizer.encode(context)])).logits[0, -1].argmax())
        word = tokenizer.decode([token])
        if word.startswith(" ") and word[1:].isalpha():
            rows.append({"id": f"greedy{len(rows)}", "context": context, "target": word[1:]})
        if len(rows) == n:
            return rows
    raise AssertionError("the model's greedy next tokens are no words")


@pytest.mark.slow
@pytest.mark.parametrize("model_fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_lastword_through_lm_eval_matches_the_model(model_fixture, request, tmp_path, wikitext_paragraphs):
    folder = request.getfixturevalue(model_fixture)
    model, tok = load_model(folder, device="cpu"), load_tokenizer(folder)
    rows = build_lastword_rows(wikitext_paragraphs, n_examples=6, min_context_words=10, max_context_words=40,
                               min_target_chars=3, seed=0) + greedy_word_rows(model, tok, wikitext_paragraphs, 3)
    data = write_jsonl(tmp_path / "lastword.jsonl", rows)
    s = settings(tasks=["lastword"], batch_size=4)
    specs, manager = plan_tasks(s, lastword_file=str(data), data_root=None, include_dir=tmp_path / "inc")
    metrics, details = evaluate_tasks(model, tok, specs, manager, s)

    direct = [direct_loglikelihood(model, tok, r["context"], " " + r["target"]) for r in rows]
    acc = sum(g for _, g in direct) / len(rows)
    assert 0 < acc < 1
    assert metrics["capability_lastword_acc"] == pytest.approx(acc)
    assert metrics["capability_lastword_perplexity"] == pytest.approx(math.exp(-sum(ll for ll, _ in direct) / len(rows)),
                                                                      rel=1e-4)
    assert set(metrics) == {"capability_lastword_acc", "capability_lastword_perplexity"}
    assert details["n_samples"] == {"lastword": len(rows)}


PIQA_ROWS = [
    {"goal": "How do you open a jar?", "sol1": "Twist the lid.", "sol2": "Hit it with a hammer until it breaks.",
     "label": 0},
    {"goal": "To dry wet hair", "sol1": "put it in the fridge", "sol2": "use a towel", "label": 1},
    {"goal": "Keep bread fresh", "sol1": "store it in a sealed bag", "sol2": "leave it out in the rain", "label": 0},
    {"goal": "Boil an egg", "sol1": "put it in boiling water", "sol2": "put it in the freezer overnight", "label": 0},
]


@pytest.mark.slow
def test_a_local_copy_of_an_lm_eval_task_runs_offline(tmp_path, tiny_gpt2_dir, monkeypatch):
    """lm_eval's own piqa (its prompt and metrics) over a local file; acc and acc_norm by hand."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = write_jsonl(tmp_path / "piqa.jsonl", PIQA_ROWS)
    s = settings(tasks=["piqa"], local_copies={"piqa": "piqa.jsonl"}, batch_size=3)
    specs, manager = plan_tasks(s, lastword_file=None, data_root=str(tmp_path), include_dir=tmp_path / "inc")
    model, tok = load_model(tiny_gpt2_dir, device="cpu"), load_tokenizer(tiny_gpt2_dir)
    metrics, details = evaluate_tasks(model, tok, specs, manager, s)

    acc, acc_norm = [], []
    for doc in PIQA_ROWS:
        choices = [doc["sol1"], doc["sol2"]]
        lls = [direct_loglikelihood(model, tok, f"Question: {doc['goal']}\nAnswer:", " " + c)[0] for c in choices]
        acc.append(max(range(2), key=lambda i: lls[i]) == doc["label"])
        acc_norm.append(max(range(2), key=lambda i: lls[i] / len(choices[i])) == doc["label"])
    assert metrics == {"capability_piqa_acc": pytest.approx(sum(acc) / 4),
                       "capability_piqa_acc_norm": pytest.approx(sum(acc_norm) / 4)}
    assert details["n_samples"] == {"piqa": 4}


def direct_summary(model, tokenizer, document: str, max_new: int) -> str:
    prompt = f"Document: {document}\nOne-sentence summary:"
    ids = torch.tensor([tokenizer.encode(prompt)])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0]


@pytest.mark.slow
def test_csum_scores_the_greedy_summary_with_rouge_score(tmp_path, tiny_gpt2_dir):
    """csum over a local XSum-format file: lm_eval's greedy summaries scored with ROUGE-1 equal the model's
    own greedy summaries scored with rouge-score; references are half the model's own words (non-trivial)."""
    from rouge_score import rouge_scorer

    model, tok = load_model(tiny_gpt2_dir, device="cpu"), load_tokenizer(tiny_gpt2_dir)
    documents = ["The council approved a new park in the centre of the town on Monday.",
                 "Heavy rain flooded roads across the region, and schools were closed.",
                 "A local team won the cup after a late goal in extra time."]
    own = [direct_summary(model, tok, d, 12) for d in documents]
    assert any(o.strip() for o in own)
    docs = [{"document": d, "summary": (o if i % 2 == 0 else "Officials said the decision was final.")}
            for i, (d, o) in enumerate(zip(documents, own))]
    write_jsonl(tmp_path / "xsum.jsonl", docs)
    s = settings(tasks=["csum"], local_copies={"csum": str(tmp_path / "xsum.jsonl")}, batch_size=1,
                 csum={"max_gen_toks": 12})
    specs, manager = plan_tasks(s, lastword_file=None, data_root=None, include_dir=tmp_path / "inc")
    metrics, _ = evaluate_tasks(model, tok, specs, manager, s)
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    expected = sum(scorer.score(doc["summary"], o.strip())["rouge1"].fmeasure for doc, o in zip(docs, own)) / 3
    assert metrics == {"capability_csum_rouge1": pytest.approx(expected)}


# -- ROUGE-1, columns ---------------------------------------------------------------------------------

def test_rouge1_by_hand_and_against_rouge_score():
    from rouge_score import rouge_scorer

    # the cat sat on the mat / the cat lay on the mat: 5 of 6 unigrams shared (the x2, cat, on, mat)
    assert rouge1("the cat sat on the mat", "The cat lay on the mat.") == pytest.approx(5 / 6)
    # stemming: "running" and "runs" -> "run"; P = 2/3 (dogs->dog, run), R = 2/2
    assert rouge1("dogs running fast", "dog runs") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert rouge1("dogs running fast", "dog runs", use_stemmer=False) == 0.0
    assert rouge1("", "a reference") == 0.0
    pairs = [("Police arrested two men after the robbery.", "Two men were arrested by police after a robbery."),
             ("Shares fell sharply on Tuesday", "Stock markets fell on Tuesday as shares dropped")]
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    for pred, ref in pairs:
        assert rouge1(pred, ref) == pytest.approx(scorer.score(ref, pred)["rouge1"].fmeasure)
    process = process_results_factory(True)
    assert process({"summary": pairs[0][1]}, ["  " + pairs[0][0] + " "]) == {"rouge1": rouge1(*pairs[0])}


def test_flatten_results_one_column_per_task_metric():
    results = {
        "piqa": {"alias": "piqa", "acc,none": 0.6, "acc_stderr,none": 0.01, "acc_norm,none": 0.7,
                 "acc_norm_stderr,none": 0.02},
        "triviaqa": {"exact_match,remove_whitespace": 0.25, "exact_match_stderr,remove_whitespace": 0.03},
        "gsm": {"exact_match,strict": 0.1, "exact_match,flexible": 0.2, "exact_match_stderr,strict": "N/A",
                "exact_match_stderr,flexible": 0.05},
        "lastword": {"perplexity,none": float("nan"), "perplexity_stderr,none": "N/A"},
    }
    metrics, stderr = flatten_results(results)
    assert metrics == {"capability_piqa_acc": 0.6, "capability_piqa_acc_norm": 0.7,
                       "capability_triviaqa_exact_match": 0.25, "capability_gsm_exact_match_strict": 0.1,
                       "capability_gsm_exact_match_flexible": 0.2, "capability_lastword_perplexity": None}
    assert stderr["capability_piqa_acc"] == 0.01 and stderr["capability_gsm_exact_match_strict"] is None


# -- names, offline, bad input ---------------------------------------------------------------------

PRESET_FILES = ["config.yaml", "workflow/presets/gpt2-large.yaml", "workflow/presets/mistral-7b.yaml",
                "workflow/presets/offline.yaml"]


def test_every_task_of_the_presets_is_known_to_lm_eval():
    """Checked against lm_eval's task index (its YAML files; no data is downloaded)."""
    known = known_names()
    tasks = set()
    for name in PRESET_FILES:
        files = [REPO / "config.yaml"] + ([REPO / name] if name != "config.yaml" else [])
        tasks |= set(load_config(files)["capability"]["tasks"])
    assert {"lastword", "piqa", "social_iqa", "hellaswag", "truthfulqa_mc2", "triviaqa", "csum"} <= tasks
    assert tasks <= known
    assert set(PROJECT_TASKS) <= known
    # the project's task names are not lm_eval's (no column could mean two things)
    assert not set(PROJECT_TASKS) & (known - set(PROJECT_TASKS))


def test_the_paper_presets_list_auras_zero_shot_tasks_kqa_and_csum():
    for preset in ("gpt2-large", "mistral-7b"):
        cap = load_config([REPO / "config.yaml", REPO / f"workflow/presets/{preset}.yaml"])["capability"]
        assert cap["enabled"] and cap["num_fewshot"] == 0 and cap["limit"] is None
        assert cap["tasks"] == ["piqa", "social_iqa", "hellaswag", "truthfulqa_mc2", "triviaqa", "csum"]
        offline = load_config([REPO / "config.yaml", REPO / f"workflow/presets/{preset}.yaml",
                               REPO / "workflow/presets/offline.yaml"])["capability"]
        assert offline["tasks"] == ["lastword"]
    default = load_config([REPO / "config.yaml"])["capability"]
    assert default["enabled"] and default["tasks"] == ["lastword"] and default["lastword"]["n_examples"] == 100


def run_cli(*argv) -> tuple[int, str]:
    import contextlib
    import io

    from detoxflow.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, err.getvalue()


@pytest.mark.parametrize("tasks, local, message", [
    (["piqa"], {}, "capability task 'piqa' reads its data set from the Hugging Face hub, but HF_DATASETS_OFFLINE"),
    (["lastword", "csum"], {}, "capability task 'csum' reads its data set from the Hugging Face hub"),
    (["piqaa"], {}, "'piqaa' is neither a task of lm_eval .* \\(did you mean piqa"),
    (["piqa"], {"piqa": "missing/piqa.jsonl"}, "capability.local_copies.piqa: file not found: .*missing/piqa.jsonl"),
    (["lastword"], {}, "capability task 'lastword' needs --lastword"),
])
def test_bad_tasks_stop_before_the_model_loads_with_one_line(tmp_path, monkeypatch, tasks, local, message):
    import re

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tmp_path / "capability.json"
    rc, err = run_cli("capability", "--model", str(tmp_path / "no-such-model"), "--data-root", str(tmp_path),
                      "--settings", json.dumps({"tasks": tasks, "local_copies": local}), "--out", str(out))
    assert rc == 2 and not out.exists()
    lines = [line for line in err.splitlines() if line.startswith("detoxflow capability: error:")]
    assert len(lines) == 1 and re.search(message, lines[0]), err


def test_a_bad_setting_is_named(tmp_path):
    with pytest.raises(SystemExit):
        run_cli("capability", "--model", "m", "--settings", json.dumps({"tasks": []}), "--out", str(tmp_path / "o"))
    with pytest.raises(DetoxflowError, match="capability.limit"):
        settings(limit=0)


def test_lastword_cli_names_a_bad_input_file(tmp_path):
    bad = write_jsonl(tmp_path / "rows.jsonl", [{"text": "A b c ."}, {"prompt": "no text"}])
    rc, err = run_cli("capability-lastword", "--text", str(bad), "--settings", "{}", "--out", str(tmp_path / "o.jsonl"))
    assert rc == 2 and "row 2 has no `text`" in err and not (tmp_path / "o.jsonl").exists()
    short = write_jsonl(tmp_path / "short.jsonl", [{"text": "Too short to use ."}])
    rc, err = run_cli("capability-lastword", "--text", str(short), "--settings", "{}", "--out", str(tmp_path / "o.jsonl"))
    assert rc == 2 and "no lastword examples" in err


def test_capability_plot_needs_capability_columns(tmp_path):
    import pandas as pd

    csv = tmp_path / "summary.csv"
    pd.DataFrame({"variant": ["base"], "method": ["base"], "expected_max_toxicity": [0.3]}).to_csv(csv, index=False)
    rc, err = run_cli("capability-plot", "--summary", str(csv), "--out", str(tmp_path / "p.png"))
    assert rc == 2 and "no capability_ column" in err and not (tmp_path / "p.png").exists()
    pd.DataFrame({"variant": ["base", "aura"], "method": ["base", "aura"], "expected_max_toxicity": [0.3, 0.2],
                  "capability_lastword_acc": [0.31, 0.29], "capability_lastword_perplexity": [40.0, 44.0]}
                 ).to_csv(csv, index=False)
    assert run_cli("capability-plot", "--summary", str(csv), "--out", str(tmp_path / "p.png"))[0] == 0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_local_copy_without_the_tasks_columns_is_named(tmp_path, tiny_gpt2_dir):
    data = write_jsonl(tmp_path / "piqa.jsonl", [{"question": "x", "answer": 1}])
    s = settings(tasks=["piqa"], local_copies={"piqa": str(data)})
    specs, manager = plan_tasks(s, lastword_file=None, data_root=None, include_dir=tmp_path / "inc")
    model, tok = load_model(tiny_gpt2_dir, device="cpu"), load_tokenizer(tiny_gpt2_dir)
    with pytest.raises(DetoxflowError, match="capability task 'piqa': could not load its data .*'goal' is undefined"):
        evaluate_tasks(model, tok, specs, manager, s)
