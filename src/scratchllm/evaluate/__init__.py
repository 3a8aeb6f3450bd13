"""Evaluation: how good a model is, measured (layer 3: reads models, never trains them).

- `classification`: accuracy, precision, recall, F1 (macro and per class), confusion matrix.
- `text`: BLEU, chrF (sacrebleu), ROUGE-1/2/L (rouge-score) and exact match of generated responses
  against references.
- `generation`: files of responses and references (the book's test-responses.json), read with the
  file and line of a bad entry named.
- `judge`: LLM-as-judge, a larger model scoring each response 0-100 over an OpenAI-compatible endpoint.

- `perplexity`: perplexity and bits per byte on a text, with a sliding window.
- `multiple_choice`: lm-evaluation-harness scoring of JSONL items (acc, acc_norm).
- `compare`: several models' results as a Markdown table, JSON and a bar chart.
- `card`: what every model card states (data provenance, training compute and energy, intended use,
  known limitations) and the results appended to the scored model's card ("## Evaluations").
"""
