"""Evaluation: how good a model is, measured (layer 3: reads models, never trains them).

- `classification`: accuracy, precision, recall, F1 (macro and per class), confusion matrix.
- `text`: ROUGE-L and exact match of generated responses against references.

- `perplexity`: perplexity and bits per byte on a text, with a sliding window.
- `multiple_choice`: lm-evaluation-harness scoring of JSONL items (acc, acc_norm).
- `compare`: several models' results as a Markdown table, JSON and a bar chart.
- `card`: results appended to the scored model's card ("## Evaluations").

Later here (the evaluation issue): an LLM judge.
"""
