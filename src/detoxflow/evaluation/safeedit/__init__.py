"""SafeEdit evaluation: safety judges, DS / DG / fluency metrics, and the per-instance DINM protocol.

Evaluation side: methods never import this package.
"""

from .judges import ClassifierJudge, OfflineJudge, is_refusal, make_judge
from .metrics import fluency, ngram_entropy, safeedit_metrics, word_tokens

__all__ = ["ClassifierJudge", "OfflineJudge", "fluency", "is_refusal", "make_judge", "ngram_entropy",
           "safeedit_metrics", "word_tokens"]
