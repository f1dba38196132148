"""The one evaluation every model folder goes through; it knows no method.

``scoring`` (toxicity scorers), ``metrics`` (toxicity, diversity, perplexity, paired bootstrap),
``safeedit`` (SafeEdit responses, judges, DS / DG / fluency) and ``summary`` (the table, plots and samples).
It reads model folders and the files other evaluation steps wrote; it imports nothing from ``detoxflow.methods``.
"""
