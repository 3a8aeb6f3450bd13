"""Weights in and out: other codebases' model folders read into scratchllm, and written back out.

- `hf`: Hugging Face model folders (GPT-2, Llama, Qwen3), both ways.
- `load`: `load_any(path)`: a scratchllm run or checkpoint, a Hugging Face folder or OpenAI's GPT-2
  release folder, as (model, tokenizer, meta); what every command that takes a model calls.
- `importer`: `import_model(path, out)`: any of those as an ordinary scratchllm checkpoint folder.

Parameter names are translated in `model.weights` only; this package reads and writes the files.
Never imports training or the command line (layer 3).
"""
