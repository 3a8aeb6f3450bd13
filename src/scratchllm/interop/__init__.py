"""Weights in and out: other codebases' checkpoint files read into scratchllm and written back.

Layer 3: reads and writes files and calls `model.weights` (the one place parameter names are
translated); never imports training or the CLI.
- `tf_bundle`: TensorFlow's tensor-bundle checkpoints (model.ckpt.index + .data-*), without TensorFlow.
- `openai`: OpenAI's original GPT-2 release folder (hparams.json, model.ckpt.*, encoder.json, vocab.bpe).
"""
