"""Text generation: sampling (sampling.py), the KV-cached engine on token ids with batching and
stops by id (engine.py), prompt-lookup speculative decoding (speculative.py), the text API with
incremental UTF-8 text, stop strings and streaming (text.py), and the book's uncached reference
loops (simple.py). Generation takes a model; reading one from a checkpoint is
`scratchllm.checkpoint.load_model` (layer 2, beside generation), and the `scratchllm generate` command
wires the two together."""

from scratchllm.generate.engine import TOKENIZER_EOS, Decoder, generate, generate_batch
from scratchllm.generate.sampling import make_generator, sample_next
from scratchllm.generate.text import Completion, complete_batch, generate_text, stream

__all__ = ["TOKENIZER_EOS", "Completion", "Decoder", "complete_batch", "generate", "generate_batch", "generate_text",
           "make_generator", "sample_next", "stream"]
