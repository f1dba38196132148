"""The ``lastword`` capability task: predict the last word of a sentence from the text before it.

A LAMBADA-style task built from local text (by default the WikiText recipe, so it runs offline):
each example is a passage of one paragraph that ends right before the last word of one of its
sentences, and that word is the target. The model is scored as lm_eval scores LAMBADA
(``lambada_openai``): ``acc`` is the share of examples whose target is the model's greedy
continuation token by token, ``perplexity`` is exp of minus the mean log-likelihood of the target
(one word per example, so a per-word perplexity).

Unlike LAMBADA, the passages are not filtered for needing the broad context (LAMBADA kept only
passages humans could not complete from the last sentence alone), so this measures ordinary
next-word prediction; it is a cheap, offline capability signal, not a LAMBADA score.
"""

from __future__ import annotations

import random
import re
from typing import Iterable, Sequence

from ...errors import DetoxflowError

#: tokens that end a sentence when they stand alone (WikiText's raw text separates punctuation)
SENTENCE_END = {".", "!", "?"}
_HEADING = re.compile(r"^\s*=.*=\s*$")


def is_heading(text: str) -> bool:
    """WikiText section headings look like `` = = Career = = ``."""
    return bool(_HEADING.match(text))


def sentence_end_targets(words: Sequence[str], min_target_chars: int) -> list[tuple[int, str]]:
    """(index, word) of every word that ends a sentence and is letters only, at least ``min_target_chars`` long.

    A word ends a sentence when the next token is ``.``, ``!`` or ``?`` (WikiText's raw text puts a
    space before them), or when it is the paragraph's last word and carries the mark (``mat.``); the
    mark is not part of the target. A mark inside a paragraph that is attached to its word is not
    taken as a sentence end: in WikiText that is an abbreviation (``Col.``, ``St.``).
    """
    out = []
    for i, word in enumerate(words):
        if i + 1 < len(words) and words[i + 1] in SENTENCE_END:
            target = word
        elif i + 1 == len(words) and len(word) > 1 and word[-1] in SENTENCE_END:
            target = word[:-1]
        else:
            continue
        if target.isalpha() and len(target) >= min_target_chars:
            out.append((i, target))
    return out


def build_lastword_rows(texts: Iterable[str], *, n_examples: int, min_context_words: int, max_context_words: int,
                        min_target_chars: int, seed: int) -> list[dict]:
    """At most one example per paragraph, paragraphs drawn at random (``seed``) until ``n_examples``.

    Each row is ``{"id": "<paragraph>:<word>", "context": ..., "target": ...}``: ``context`` is the
    paragraph's words before the target (the last ``max_context_words`` of them, at least
    ``min_context_words``) joined by single spaces.
    """
    if min_context_words > max_context_words:
        raise DetoxflowError(f"capability.lastword: min_context_words ({min_context_words}) is larger than "
                             f"max_context_words ({max_context_words})")
    rng = random.Random(seed)
    candidates: list[tuple[int, list[str], list[tuple[int, str]]]] = []
    for p, text in enumerate(texts):
        if not isinstance(text, str) or is_heading(text):
            continue
        words = text.split()
        ends = [(i, t) for i, t in sentence_end_targets(words, min_target_chars) if i >= min_context_words]
        if ends:
            candidates.append((p, words, ends))
    rng.shuffle(candidates)
    rows = []
    for p, words, ends in candidates[:n_examples]:
        i, target = ends[rng.randrange(len(ends))]
        rows.append({"id": f"{p}:{i}", "context": " ".join(words[max(0, i - max_context_words):i]), "target": target})
    return rows


def lastword_task_config(data_file: str) -> dict:
    """The lm_eval task config of ``lastword`` over a JSONL file of :func:`build_lastword_rows` rows."""
    return {
        "task": "lastword",
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "loglikelihood",
        "doc_to_text": "{{context}}",
        "doc_to_target": "{{' ' + target}}",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
        ],
        "metadata": {"version": 1.0},
    }
