"""Pruning masks: which weights of a linear layer are pruned, kept with the model so they stay zero.

A mask is a bool tensor of a weight's shape (True: kept, False: pruned), held by its `nn.Linear` as a
non-persistent buffer `weight_mask` (it moves with the model; the layer's state dict, and so
model.safetensors, is unchanged). `attach_mask(linear, mask)` zeroes the pruned weights and makes
training keep them at zero, whichever loop runs it (`train.loop`, a finetune, a notebook):
- the weight's gradient is multiplied by the mask (a tensor hook), so a pruned weight gets a zero
  gradient. AdamW's moments of a weight that only ever saw zero gradients are zero, its update is
  zero, and its decoupled weight decay multiplies zero: the weight stays exactly 0.0 (SGD too).
  Gradient clipping sees the masked gradients.
- before the layer's state dict is read (every checkpoint, every `state_dict()`), the mask is applied
  again: an optimizer whose update is not elementwise (Muon orthogonalises the whole update matrix)
  may move pruned weights during training, but what is saved has them at zero.

In a checkpoint folder the masks are `masks.safetensors` (`checkpoint.folder` writes and reads it):
one uint8 tensor per masked layer, named by the layer, the mask's bits packed eight to a byte in
row-major order (`pack_mask`), so a mask costs 1/32 of its fp32 weight.

Not here: choosing what to prune (`compress.prune`), the file (`checkpoint`).
"""

from __future__ import annotations

import torch
from torch import nn

MASK = "weight_mask"  # the buffer's name on a masked nn.Linear


def attach_mask(linear: nn.Linear, mask: torch.Tensor) -> None:
    """Give `linear` the bool `mask` (its weight's shape): pruned weights set to zero now and kept at zero
    by training (see the module doc). A layer masked already gets the new mask (the hooks once)."""
    w = linear.weight
    if tuple(mask.shape) != tuple(w.shape):
        raise ValueError(f"a mask of shape {tuple(mask.shape)} for a weight of shape {tuple(w.shape)}")
    fresh = getattr(linear, MASK, None) is None
    linear.register_buffer(MASK, mask.to(device=w.device, dtype=torch.bool), persistent=False)
    _apply(linear)
    if fresh:
        # the hooks read the buffer when they run, so a mask replaced or moved with the model is the one used
        w.register_hook(lambda g: g * getattr(linear, MASK).to(g.dtype))
        linear.register_state_dict_pre_hook(lambda module, prefix, keep_vars: _apply(module))


def _apply(linear: nn.Module) -> None:
    """weight *= mask, in place (no gradient recorded)."""
    with torch.no_grad():
        linear.weight.mul_(getattr(linear, MASK).to(linear.weight.dtype))


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """{layer name: its mask} of every masked layer, in the model's order."""
    return {name: getattr(m, MASK) for name, m in model.named_modules() if getattr(m, MASK, None) is not None}


def has_masks(model: nn.Module) -> bool:
    return any(getattr(m, MASK, None) is not None for m in model.modules())


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask (any shape) -> uint8 (ceil(n / 8),): element 8j + b in bit b of byte j (row-major)."""
    flat = mask.detach().flatten().to(torch.uint8).cpu()
    pad = (-flat.numel()) % 8
    flat = torch.cat([flat, flat.new_zeros(pad)]).view(-1, 8)  # (n / 8, 8)
    shifts = torch.arange(8, dtype=torch.uint8)
    return (flat << shifts).sum(dim=1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """`pack_mask`'s inverse: uint8 (ceil(n / 8),) -> bool `shape`."""
    n = 1
    for s in shape:
        n *= s
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != (n + 7) // 8:
        raise ValueError(f"{packed.numel()} packed bytes ({packed.dtype}) cannot hold a mask of shape {tuple(shape)}")
    bits = (packed[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1  # (n / 8, 8)
    return bits.flatten()[:n].view(shape).bool()
