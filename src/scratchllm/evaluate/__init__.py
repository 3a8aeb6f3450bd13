"""Evaluation: how good a model is, measured (layer 3: reads models, never trains them).

- `classification`: accuracy, precision, recall, F1 (macro and per class), confusion matrix.
- `text`: ROUGE-L and exact match of generated responses against references.

Later here (the evaluation issue): perplexity and bits per byte, multiple choice, an LLM judge.
"""
