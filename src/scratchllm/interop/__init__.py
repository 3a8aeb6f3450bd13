"""Weights in and out: other codebases' checkpoint files read into scratchllm and written back,
downloads, ONNX.

- `tf_bundle`: TensorFlow's tensor-bundle checkpoints (model.ckpt.index + .data-*), without TensorFlow.
- `openai`: OpenAI's original GPT-2 release folder (hparams.json, model.ckpt.*, encoder.json, vocab.bpe).
- `download`: OpenAI's GPT-2 release files and Hugging Face repositories over plain HTTPS, resumable
  and checked.
- `onnx_export`: our GPT as an ONNX graph (with or without explicit KV-cache inputs) and a greedy
  loop through onnxruntime.

Parameter names of other codebases are translated in one place, `model.weights`; this package reads
and writes the files and calls it. Layer 3: imports errors, files, config, runtime, tokenizer, model,
checkpoint, data and generate; never train or cli.
"""
