"""Muon: momentum orthogonalized by Newton-Schulz, for the hidden weight matrices of a transformer.

What it is: an optimizer that, for each 2-D weight inside the transformer blocks, keeps SGD momentum
of the gradient and replaces it by the nearest semi-orthogonal matrix (U V^T, where U S V^T is the
momentum's SVD) before the update, so every direction of the update moves at the same rate instead
of a few dominant ones. The SVD is approximated by five quintic Newton-Schulz iterations, a handful of
small matmuls. Everything else (embeddings, the output head, norm gains, biases) keeps AdamW, and
one `Muon` object holds both kinds of group, so the training loop, schedules, checkpoints and exact
resume treat it like any other optimizer. On tiny Shakespeare it reaches a given loss in fewer steps
than AdamW (see benchmarks/pretrain_quality.py).

What it isn't: the distributed version (ranks orthogonalizing shards of the matrix list), or a
replacement for AdamW on embeddings and heads (Muon's argument is about matrices that map hidden
states to hidden states).

References: Keller Jordan et al., "Muon: An optimizer for hidden layers in neural networks" (2024,
kellerjordan.github.io/posts/muon); Bernstein & Newhouse, "Old optimizer, new norm" (2024);
Liu et al., "Muon is scalable for LLM training" (2025); Loshchilov & Hutter, "Decoupled weight decay
regularization" (2019) for the AdamW groups.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

# Quintic Newton-Schulz coefficients from Jordan et al.: chosen to push every singular value of the
# normalised input towards 1 as fast as possible (slope 3.4445 at 0) rather than converge exactly;
# after five steps singular values lie in roughly [0.7, 1.2], which trains as well as an exact U V^T.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximately U @ V.T for a matrix g = U S V.T (or a stack of them, (..., rows, cols)), by
    `steps` Newton-Schulz iterations computed in `dtype` (bf16 is enough: the result only needs
    singular values near 1, and Jordan et al. run it in bf16).

    >>> q = orthogonalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)))
    >>> q.shape, bool(((s := torch.linalg.svdvals(q)) > 0.6).all() and (s < 1.25).all())
    (torch.Size([4, 8]), True)
    """
    a, b, c = NS_COEFFS
    # Frobenius norm >= spectral norm, so after this every singular value is <= 1
    x = (g.float() / (g.norm(dim=(-2, -1), keepdim=True) + 1e-7)).to(dtype)
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT  # (..., cols, rows): iterate on the smaller Gram matrix
    for _ in range(steps):
        gram = x @ x.mT  # (..., r, r) with r = min(rows, cols)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(g.dtype)


def muon_directions(grads: list[torch.Tensor], bufs: list[torch.Tensor], momentum: float,
                    splits: list[list[int] | None], ns_steps: int = 5,
                    dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """The Muon direction for each matrix: Nesterov momentum, orthogonalized, scaled for its shape.

    The momenta `bufs` are updated in place. A fused projection (QKV) is orthogonalized block by
    block along its rows (its `splits`), since its blocks are separate matrices. Blocks of the same
    shape are stacked and orthogonalized together (a few batched matmuls instead of many small ones).
    The factor sqrt(max(1, rows / cols)) keeps the update's RMS per element comparable across shapes.
    """
    torch._foreach_lerp_(bufs, grads, 1 - momentum)  # buf = momentum * buf + (1 - momentum) * grad
    looks = torch._foreach_lerp(grads, bufs, momentum)  # Nesterov: look one momentum step ahead
    blocks = [list(g.split(sp, dim=0)) if sp else [g] for g, sp in zip(looks, splits)]
    by_shape: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for i, bs in enumerate(blocks):
        for j, blk in enumerate(bs):
            by_shape.setdefault(tuple(blk.shape), []).append((i, j))
    for (rows, cols), where in by_shape.items():
        stacked = torch.stack([blocks[i][j] for i, j in where])  # (n, rows, cols)
        ortho = orthogonalize(stacked, ns_steps, dtype).to(stacked.dtype) * math.sqrt(max(1.0, rows / cols))
        for (i, j), o in zip(where, ortho.unbind(0)):
            blocks[i][j] = o
    return [torch.cat(bs, dim=0) if len(bs) > 1 else bs[0] for bs in blocks]


class Muon(torch.optim.Optimizer):
    """Muon for groups with `muon=True`, AdamW for the others, in one optimizer.

    Group keys: lr, weight_decay (decoupled, as AdamW: p *= 1 - lr * wd), muon, and for Muon groups
    momentum, ns_steps, ns_bf16 (Newton-Schulz in bf16; worth it where bf16 matmuls are native,
    `runtime.fast_bf16_matmul`) and splits (row sizes of fused blocks, or None); for AdamW groups
    betas and eps.
    """

    def __init__(self, groups: Iterable[dict[str, Any]], lr: float, *, momentum: float = 0.95,
                 ns_steps: int = 5, ns_bf16: bool = False, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        defaults = dict(lr=lr, momentum=momentum, ns_steps=ns_steps, ns_bf16=ns_bf16, betas=betas, eps=eps,
                        weight_decay=weight_decay, muon=False, splits=None)
        super().__init__(list(groups), defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch's Optimizer.step contract
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if not group["muon"]:
                for p in params:
                    adamw_step(p, self.state[p], group)
                continue
            for p in params:
                if not self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            updates = muon_directions([p.grad for p in params], [self.state[p]["momentum_buffer"] for p in params],
                                      group["momentum"], [group["splits"]] * len(params), group["ns_steps"],
                                      torch.bfloat16 if group["ns_bf16"] else torch.float32)
            lr = group["lr"]
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
            torch._foreach_add_(params, updates, alpha=-lr)
        return loss


def adamw_step(p: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One AdamW update of `p` (Kingma & Ba 2015 with decoupled decay), as torch.optim.AdamW computes it."""
    beta1, beta2 = group["betas"]
    if not state:
        state["step"] = torch.tensor(0.0)
        state["exp_avg"] = torch.zeros_like(p)
        state["exp_avg_sq"] = torch.zeros_like(p)
    state["step"] += 1
    t = float(state["step"])
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m.lerp_(p.grad, 1 - beta1)  # first moment
    v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)  # second moment
    denom = (v.sqrt() / math.sqrt(1 - beta2 ** t)).add_(group["eps"])
    p.mul_(1 - group["lr"] * group["weight_decay"])
    p.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1 ** t))
