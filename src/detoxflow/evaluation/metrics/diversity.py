"""Distinct-n: unique n-grams over all n-grams of a prompt's continuations, averaged over prompts.

Follows the DExperts/GeDi convention (whitespace tokens, per prompt, then the
mean); prompts whose continuations hold no n-gram are skipped.
"""

from __future__ import annotations

from typing import Sequence


def distinct_n(continuations: Sequence[Sequence[str]], n: int) -> float:
    values = []
    for group in continuations:
        total, unique = 0, set()
        for text in group:
            tokens = text.split()
            grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
            total += len(grams)
            unique.update(grams)
        if total:
            values.append(len(unique) / total)
    return float(sum(values) / len(values)) if values else 0.0
