"""Split-and-merge task-vector negation (Kim et al., COLM 2024; Ilharco et al., ICLR 2023).

Steps, one module each, each a pipeline job:

- :mod:`.toxic_set`   shuffle the toxic rows of a dataset recipe once, with a seed
- :mod:`.split`       cut them into N equal, disjoint parts
- :mod:`.finetune`    fine-tune the base model on one part (resumable)
- :mod:`.merge`       theta = theta_pre - lambda * mean_i(theta_i - theta_pre), streamed
- :mod:`.choose_lambda` Ilharco's perplexity rule and the paper's toxicity matching
- :mod:`.plots`       toxicity vs perplexity across lambda
"""
