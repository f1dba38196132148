"""The ``csum`` capability task: XSum summaries scored with ROUGE-1 by the rouge-score package.

The SafeEdit paper's CSum is XSum ROUGE-1 (run by the authors in OpenCompass). lm_eval's own
``xsum`` task goes through the unitxt package and its metric; this task instead asks the model
for a greedy one-line summary of each XSum document (lm_eval ``generate_until``) and scores it
against the reference summary with ``rouge_score.rouge_scorer.RougeScorer(["rouge1"])``, the
F-measure, averaged over documents (0-1).
"""

from __future__ import annotations

import functools

PROMPT = "Document: {{document}}\nOne-sentence summary:"


@functools.lru_cache(maxsize=2)
def _scorer(use_stemmer: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=use_stemmer)


def rouge1(prediction: str, reference: str, *, use_stemmer: bool = True) -> float:
    """ROUGE-1 F-measure of one prediction against one reference (rouge-score's tokenizer)."""
    return float(_scorer(use_stemmer).score(reference, prediction)["rouge1"].fmeasure)


def process_results_factory(use_stemmer: bool):
    """lm_eval ``process_results`` for csum: the doc's ``summary`` against the first (only) response."""

    def process_results(doc: dict, results: list) -> dict:
        prediction = results[0] if results else ""
        return {"rouge1": rouge1(str(prediction).strip(), str(doc["summary"]), use_stemmer=use_stemmer)}

    return process_results


def csum_task_config(settings: dict, data_file: str | None = None) -> dict:
    """The lm_eval task config of ``csum``: the hub data set of ``settings`` (capability.csum), or a
    local JSON / JSONL copy with its ``document`` and ``summary`` columns."""
    if data_file:
        source = {"dataset_path": "json", "dataset_name": None,
                  "dataset_kwargs": {"data_files": {settings["split"]: str(data_file)}}}
    else:
        kwargs = {"revision": settings["revision"]} if settings["revision"] else {}
        source = {"dataset_path": settings["path"], "dataset_name": settings["name"], "dataset_kwargs": kwargs}
    return {
        "task": "csum",
        **source,
        "test_split": settings["split"],
        "output_type": "generate_until",
        "doc_to_text": PROMPT,
        "doc_to_target": "{{summary}}",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": settings["max_gen_toks"], "do_sample": False},
        "process_results": process_results_factory(settings["use_stemmer"]),
        "metric_list": [{"metric": "rouge1", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
