"""Evaluation metrics: toxicity aggregates, perplexity, diversity."""
