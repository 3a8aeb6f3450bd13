"""The model: `GPT` (gpt.py) built from blocks (layers.py) on explicit math (functional.py),
with a preallocated KV cache (kv_cache.py)."""

from scratchllm.model.gpt import GPT, init_weights
from scratchllm.model.kv_cache import KVCache

__all__ = ["GPT", "KVCache", "init_weights"]
