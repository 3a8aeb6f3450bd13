"""Weights in and out: other codebases' model folders read into scratchllm and written back out,
downloads, ONNX.

Layer 3: reads and writes files and calls `model.weights` (the one place parameter names are
translated); imports errors, files, config, runtime, tokenizer, model, checkpoint, data and generate;
never train or cli.
- `hf`: Hugging Face model folders (GPT-2, Llama, Qwen3), both ways.
- `tf_bundle`: TensorFlow's tensor-bundle checkpoints (model.ckpt.index + .data-*), without TensorFlow.
- `openai`: OpenAI's original GPT-2 release folder (hparams.json, model.ckpt.*, encoder.json, vocab.bpe).
- `load`: `load_any(path)`: a scratchllm run or checkpoint, a Hugging Face folder or OpenAI's GPT-2
  release folder, as (model, tokenizer, meta); what every command that takes a model calls.
- `importer`: `import_model(path, out)`: any of those as an ordinary scratchllm checkpoint folder.
- `download`: OpenAI's GPT-2 release files and Hugging Face repositories over plain HTTPS, resumable
  and checked.
- `onnx_export`: our GPT as an ONNX graph (with or without explicit KV-cache inputs) and a greedy
  loop through onnxruntime.
- `gguf`: our GPT as a GGUF file for llama.cpp and Ollama (f32, f16, q8_0, q4_0), tokenizer and chat
  template included.
"""
