"""A key/value cache allocated once per generation.

During generation each new token attends to the keys and values of every earlier token. Instead
of recomputing them (the book's uncached loop) or concatenating a growing tensor at each step,
`KVCache` preallocates (n_layer, B, n_kv_head, max_len, head_dim) buffers and writes each step's
keys and values in place. `pos` is how many positions are filled, the same for every row (batched
prompts are left-padded so they end together; a row whose tokens start later leaves the positions
before them unused, and the model's attention mask hides them).

`addresses` gives a layer's buffers to C code that writes one position and reads the filled ones
in place (a batch-1 decode step's attention, `model.layers.Attention`).

`truncate` rolls `pos` back, so a verifier can write draft tokens and keep only the accepted ones.

For a batch that rows join and leave while it runs (continuous batching, `generate.engine`), the
buffers may hold more rows than a forward pass uses (`update` fills the first B rows, B being the
batch of the keys given) and grow on demand: `grow` makes room (filled positions are kept),
`move_row` copies one row over another (a leaving row's slot is taken by the last one), `shift`
moves every row's filled positions left or right (to free unused positions at the start, or to
make room before them), and `place` writes rows prefilled in a cache of their own.

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
        """Rows the buffers hold (a forward pass may use fewer: the first B)."""
        return self.k.shape[1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, n_kv_head, T, head_dim) new keys/values at `pos` and return all filled ones.

        The returned tensors are views of the buffers (B, n_kv_head, pos + T, head_dim); `pos` moves
        on only when the model calls `advance` after its last layer.
        """
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise UserError(f"the KV cache holds {self.max_len} positions; {end} were asked for")
        b = k.shape[0]
        k_all, v_all = self.k[layer, :b], self.v[layer, :b]  # (B, n_kv_head, max_len, head_dim)
        k_all.narrow(2, self.pos, end - self.pos).copy_(k)
        v_all.narrow(2, self.pos, end - self.pos).copy_(v)
        return k_all.narrow(2, 0, end), v_all.narrow(2, 0, end)

    def addresses(self, layer: int) -> tuple[int, int, int]:
        """Where row 0 of `layer`'s keys and values start in memory, and the elements between two heads: what
        a C routine that writes and reads the cache in place takes (`model.gemv`'s `attend`). Checks that one
        more position fits."""
        if self.pos + 1 > self.max_len:
            raise UserError(f"the KV cache holds {self.max_len} positions; {self.pos + 1} were asked for")
        k, v = self.k, self.v
        step = k.stride(0) * k.element_size()
        return k.data_ptr() + layer * step, v.data_ptr() + layer * step, k.stride(2)

    def advance(self, n: int) -> None:
        self.pos += n

    def reset(self) -> None:
        self.pos = 0

    def truncate(self, pos: int) -> None:
        """Forget every position from `pos` on (speculative decoding drops rejected draft tokens)."""
        if not 0 <= pos <= self.pos:
            raise ValueError(f"truncate to {pos}: the cache holds {self.pos} positions")
        self.pos = pos

    def grow(self, batch_size: int, max_len: int) -> None:
        """Buffers for at least `batch_size` rows and `max_len` positions; the filled positions are kept."""
        if batch_size <= self.batch_size and max_len <= self.max_len:
            return
        n_layer, b, h, _, d = self.k.shape
        shape = (n_layer, max(batch_size, b), h, max(max_len, self.max_len), d)
        k = torch.zeros(shape, dtype=self.k.dtype, device=self.k.device)
        v = torch.zeros(shape, dtype=self.v.dtype, device=self.v.device)
        k[:, :b, :, : self.pos] = self.k[:, :, :, : self.pos]
        v[:, :b, :, : self.pos] = self.v[:, :, :, : self.pos]
        self.k, self.v, self.max_len = k, v, shape[3]

    def move_row(self, src: int, dst: int) -> None:
        """Copy row `src`'s filled positions over row `dst`."""
        self.k[:, dst, :, : self.pos] = self.k[:, src, :, : self.pos]
        self.v[:, dst, :, : self.pos] = self.v[:, src, :, : self.pos]

    def shift(self, n: int, rows: int | None = None) -> None:
        """Move the filled positions of the first `rows` rows (default all) by `n` (< 0: left, dropping the
        first -n positions; > 0: right, leaving n unused positions at the start); `pos` moves with them."""
        rows = self.batch_size if rows is None else rows
        if n == 0:
            return
        if not -self.pos <= n <= self.max_len - self.pos:
            raise ValueError(f"shift by {n}: the cache holds {self.pos} of {self.max_len} positions")
        src = slice(max(0, -n), self.pos)
        dst = slice(max(0, n), self.pos + n)
        for buf in (self.k, self.v):
            buf[:, :rows, :, dst] = buf[:, :rows, :, src].clone()
        self.pos += n

    def place(self, other: KVCache, rows: list[int]) -> None:
        """Write `other`'s rows (all its filled positions) into `rows` of this cache, ending at `pos`."""
        b, n = len(rows), other.pos
        if n > self.pos or b != other.batch_size or max(rows) >= self.batch_size:
            raise ValueError(f"{other.batch_size} rows of {n} positions do not fit rows {rows} of a cache of "
                             f"{self.batch_size} rows filled to {self.pos}")
        if rows == list(range(rows[0], rows[0] + b)):  # consecutive rows: a slice, no gather
            self.k[:, rows[0]: rows[0] + b, :, self.pos - n: self.pos] = other.k[:, :, :, :n]
            self.v[:, rows[0]: rows[0] + b, :, self.pos - n: self.pos] = other.v[:, :, :, :n]
            return
        for j, r in enumerate(rows):
            self.k[:, r, :, self.pos - n: self.pos] = other.k[:, j, :, :n]
            self.v[:, r, :, self.pos - n: self.pos] = other.v[:, j, :, :n]

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
