"""A key/value cache allocated once per generation.

During generation each new token attends to the keys and values of every earlier token. Instead
of recomputing them (the book's uncached loop) or concatenating a growing tensor at each step,
`KVCache` preallocates (n_layer, B, n_kv_head, max_len, head_dim) buffers and writes each step's
keys and values in place. `pos` is how many positions are filled, the same for every row (batched
prompts are left-padded so they end together).

`truncate` rolls `pos` back, so a verifier can write draft tokens and keep only the accepted ones.

Not here: deciding what to do when the cache is full; the generation engine slides its window.
"""

from __future__ import annotations

import torch

from scratchllm.errors import UserError


class KVCache:
    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.pos = 0

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, n_kv_head, T, head_dim) new keys/values at `pos` and return all filled ones.

        The returned tensors are views of the buffers (B, n_kv_head, pos + T, head_dim); `pos` moves
        on only when the model calls `advance` after its last layer.
        """
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise UserError(f"the KV cache holds {self.max_len} positions; {end} were asked for")
        k_all, v_all = self.k[layer], self.v[layer]  # (B, n_kv_head, max_len, head_dim)
        k_all.narrow(2, self.pos, end - self.pos).copy_(k)
        v_all.narrow(2, self.pos, end - self.pos).copy_(v)
        return k_all.narrow(2, 0, end), v_all.narrow(2, 0, end)

    def advance(self, n: int) -> None:
        self.pos += n

    def reset(self) -> None:
        self.pos = 0

    def truncate(self, pos: int) -> None:
        """Forget every position from `pos` on (speculative decoding drops rejected draft tokens)."""
        if not 0 <= pos <= self.pos:
            raise ValueError(f"truncate to {pos}: the cache holds {self.pos} positions")
        self.pos = pos

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
