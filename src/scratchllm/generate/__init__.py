"""Text generation: sampling (sampling.py), the KV-cached engine with batching, stops and streaming
(engine.py), incremental UTF-8 text and stop strings (text.py), and the book's uncached reference
loops (simple.py). Loading checkpoints is training's job (`scratchllm.train.checkpoint.load_model`);
the `scratchllm generate` command wires the two together."""

from scratchllm.generate.engine import generate, generate_batch, generate_text, stream
from scratchllm.generate.sampling import make_generator, sample_next

__all__ = ["generate", "generate_batch", "generate_text", "make_generator", "sample_next", "stream"]
