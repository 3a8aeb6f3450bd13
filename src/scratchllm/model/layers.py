"""The GPT's building blocks as modules: norms, attention, feed-forward, transformer block.

Each class holds parameters and calls torch's fast kernels (or, for attention="explicit" and where
"auto" finds it faster, the written-out math of `model.functional`, imported as `ops` so it never
reads like torch's `F`). `explicit_attention` is the one statement of which attention path runs;
a batch-1 decode step (one row, a KV cache, no autograd) takes a shorter road through the same modules
and parameters where scratchllm's C kernel is built (`Block.decode_one`): attention the norm and `qkv`
product in one C call (`normed_product`) and one more for QK-norm, RoPE, the cache and the heads
(`Attention.attend_one`), the MLP's norm, products and activation one call (`MLP.hidden_one`), residuals
added inside the projections, the final norm one call (`norm_row`), the token's embedding row one call (`embed_row`);
tested equal to the general path (and model.step_plan replays those calls in one). The same
calls run for quantized layers (model.quant_linear's QuantLinear, fp32 rows), through the quantized products.
`explicit_attention` is also what the training memory estimate (`train.pretrain`) asks. The book's
hand-written teaching versions live in `scratchllm.steps` and are tested equal to these.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.config.model import ModelConfig
from scratchllm.model import functional as ops
from scratchllm.model import gemv
from scratchllm.model.fast_linear import FastLinear, linear_plus
from scratchllm.model.quant_linear import QuantEmbedding, QuantLinear

# attention="auto" uses the explicit math for at most this many keys: beyond, its (B, n_head, T, T)
# weights cost more memory than the speed is worth (see `explicit_attention`).
AUTO_EXPLICIT_MAX_KEYS = 512
NORM_DTYPES = (torch.float32, torch.bfloat16)  # the rows `norm_row` takes to the C kernel
# The decode step's bound C calls (`normed_product`, `MLP.hidden_one`), by the FastLinear or QuantLinear they read
# (`qkv`, `fc`), with weak references to the other modules they read (the norm, the gate): an entry lives as long as
# that layer (a FastLinear: one `fast_linears` context), as its own bound product does; a QuantLinear's entry also
# holds the products it was bound with, and is rebound when the layer's products change (its buffers moved).
_NORMED_CALLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MLP_CALLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def bound_calls(model: nn.Module) -> list:
    """The decode step's bound C calls of `model`'s modules as they are now (with the modules themselves, whose own
    products they hold): what keeps the addresses a recorded step calls with valid (model.step_plan)."""
    modules = list(model.modules())
    return modules + [table[m] for table in (_NORMED_CALLS, _MLP_CALLS) for m in modules if m in table]


def _ref(module: nn.Module | None):
    """A weak reference to `module`, or a callable giving None."""
    return weakref.ref(module) if module is not None else _none


def _none() -> None:
    return None


def explicit_attention(mode: str, device_type: str, training: bool, bf16: bool, n_keys: int) -> bool:
    """Whether attention `mode` (ModelConfig.attention) runs the explicit math rather than torch's fused
    `scaled_dot_product_attention`, for a call on `device_type`, with gradients (`training`), computing
    in bf16 (autocast or bf16 tensors), over `n_keys` keys.

    "explicit" always, "sdpa" never; "auto" when training in bf16 on a CPU with at most 512 keys:
    there torch's fused CPU backward in bf16 is slow and the explicit math trains faster
    (`benchmarks/train_throughput.py`, its bf16 rows; figures in benchmarks/RESULTS.md). In fp32, and
    for inference, the fused kernel is as fast or faster, and it never holds the (B, n_head, T, T)
    weights, so it stays the choice there.

    >>> explicit_attention("auto", "cpu", training=True, bf16=True, n_keys=256)
    True
    >>> explicit_attention("auto", "cpu", training=False, bf16=True, n_keys=256)
    False
    """
    if mode != "auto":
        return mode == "explicit"
    return device_type == "cpu" and training and bf16 and n_keys <= AUTO_EXPLICIT_MAX_KEYS


def hooked(module: nn.Module) -> bool:
    """Whether forward hooks watch `module` (a decode step's short road then leaves its forward to it)."""
    return bool(module._forward_pre_hooks or module._forward_hooks)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(F, "rms_norm"):  # torch >= 2.4: one fused kernel, equal to ops.rms_norm (tested)
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return ops.rms_norm(x, self.weight, self.eps)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


def norm_row(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)` (an RMSNorm or LayerNorm of make_norm's) for one row of a decode step (no autograd, no autocast),
    in one C call (`gemv.Kernel.norm`: torch's CPU RMSNorm of a row is several ops) where the kernel is built,
    else (or for another module, dtype or device, or a hooked norm) the module itself; equal to float rounding."""
    kernel = gemv.load()
    if kernel is None or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
        return norm(x)
    params = kernel_norm(norm, x)
    return norm(x) if params is None else kernel.norm(x, params.weight, params.bias, params.eps, params.rms)


def embed_row(emb: nn.Module, pos_emb: nn.Embedding | None, idx: torch.Tensor, pos: int) -> torch.Tensor | None:
    """`emb(idx)` (+ `pos_emb`'s row `pos`: learned positions) for a decode step's one token idx (1, 1) (no autograd):
    one C call (`gemv.Kernel.embed`, `embed_q` for model.quant_linear's QuantEmbedding, whose rows it dequantizes
    from the kernel's buffers) where the kernel is built; else (other modules or devices, hooked ones) None, and the
    caller runs the modules. Equal to them exactly (a row copied, dequantized or added as torch does it)."""
    kernel = gemv.load()
    if (kernel is None or torch.is_grad_enabled() or hooked(emb) or (pos_emb is not None and hooked(pos_emb))
            or not idx.is_cpu):
        return None
    pos_table = None if pos_emb is None else pos_emb.weight
    token, kind = int(idx), type(emb)
    if not 0 <= token < emb.num_embeddings or (pos_table is not None and pos >= pos_table.shape[0]):
        return None  # (the module says what is wrong)
    if kind is nn.Embedding:
        table = emb.weight
        if (table.dtype not in NORM_DTYPES or not table.is_cpu or not table.is_contiguous()
                or (pos_table is not None and (pos_table.dtype is not table.dtype or not pos_table.is_contiguous()))):
            return None
        return kernel.embed(table, pos_table, token, pos)
    if kind is QuantEmbedding:
        product = emb.source._product()  # its bound product: the buffers as the kernel reads them (int4 relaid)
        if product is None or (pos_table is not None and (pos_table.dtype is not torch.float32
                                                          or not pos_table.is_contiguous())):
            return None
        return kernel.embed_q(product, pos_table, token, pos)
    return None


def kernel_norm(norm: nn.Module, x: torch.Tensor) -> gemv.RowNorm | None:
    """`norm` as the C kernel computes it for the one row `x`: make_norm's RMSNorm or LayerNorm, unhooked, with
    contiguous CPU parameters of x's dtype and size (fp32 or bf16); else None."""
    kind = type(norm)
    if not (kind is RMSNorm or kind is nn.LayerNorm) or hooked(norm):
        return None
    weight, bias = norm.weight, None if kind is RMSNorm else norm.bias
    if (weight is None or weight.dim() != 1 or x.numel() != weight.numel() or weight.dtype is not x.dtype
            or x.dtype not in NORM_DTYPES or not (x.is_cpu and weight.is_cpu and weight.is_contiguous())
            or (bias is not None and (bias.dtype is not x.dtype or not (bias.is_cpu and bias.is_contiguous())))):
        return None
    return gemv.RowNorm(weight, bias, norm.eps, kind is RMSNorm)


def normed_product(norm: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`layer(norm(x))` for one row of a decode step (no autograd, no autocast: the caller checked): one C call
    (`gemv.Kernel.bind_normed`, bound once per FastLinear) where `layer` runs through the kernel (a FastLinear of
    x's dtype, or a QuantLinear that takes the fp32 row: its quantized product normalizes the row first,
    `QuantLinear.bind_normed`) and `kernel_norm` takes `norm`; else `norm_row`, then `layer`. Equal to float
    rounding."""
    kind = type(layer)
    if kind is QuantLinear:  # its product bound to the buffers as they are now (rebound when they change)
        base = layer.one_row_product(x)
    else:
        base = layer.product if kind is FastLinear else None
    if base is None:  # no kernel product to fuse with
        return layer(norm_row(norm, x))
    entry = _NORMED_CALLS.get(layer)
    if entry is None or entry[0]() is not norm or entry[2] is not base or hooked(norm):
        params = kernel_norm(norm, x)
        if params is None or (kind is FastLinear and layer.dtype is not x.dtype):
            return layer(norm_row(norm, x))
        call = layer.bind_normed(params) if kind is QuantLinear else gemv.load().bind_normed(layer.weight,
                                                                                            layer.bias, params)
        entry = _NORMED_CALLS[layer] = (weakref.ref(norm), call, base)
    return entry[1](x)


class Attention(nn.Module):
    """Causal multi-head (or grouped-query) self-attention with one fused QKV projection, and with
    config.qk_norm an RMSNorm over each head's queries and keys before RoPE (Qwen3's QK-norm)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        qkv_out = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.qkv = nn.Linear(config.n_embd, qkv_out, bias=config.qkv_bias)
        self.proj = nn.Linear(config.attn_dim, config.n_embd, bias=config.attn_out_bias)
        # one weight of head size each, shared by all heads (None: no QK-norm, nothing runs)
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.dropout = config.dropout
        self.mode = config.attention

    def qkv_sizes(self) -> list[int]:
        """Output widths of the query, key and value blocks inside the fused `qkv` projection."""
        return [self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim]

    @staticmethod
    def explicit_is_faster(x: torch.Tensor, n_keys: int) -> bool:
        """attention="auto" for this call: `explicit_attention` asked about the input `x` and the state
        of torch (gradients on, bf16 tensors or a bf16 CPU autocast)."""
        grad = torch.is_grad_enabled()
        bf16 = grad and (x.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu")
                                                        and torch.get_autocast_dtype("cpu") == torch.bfloat16))
        return explicit_attention("auto", x.device.type, grad, bf16, n_keys)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None, kv_cache=None, layer: int = 0) -> torch.Tensor:
        if kv_cache is not None and mask is None and x.numel() == x.shape[-1]:
            y = self.attend_one(x, rope, kv_cache, layer)
            if y is not None:
                return self.proj(y)
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split(self.qkv_sizes(), dim=-1)
        q = q.view(b, t, self.n_head, self.head_dim).transpose(1, 2)  # (B, n_head, T, head_dim)
        k = k.view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv_head, T, head_dim)
        v = v.view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv_head, T, head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = ops.apply_rope(q, *rope), ops.apply_rope(k, *rope)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (B, n_kv_head, T_past + T, head_dim)
        rep = self.n_head // self.n_kv_head
        if rep > 1:
            k, v = ops.repeat_kv(k, rep), ops.repeat_kv(v, rep)  # (B, n_head, T_k, head_dim)
        p = self.dropout if self.training else 0.0
        # mask: None means "plain causal" when T_q == T_k, "attend to everything" for one new query
        causal = mask is None and t > 1
        if self.mode == "explicit" or (self.mode == "auto" and self.explicit_is_faster(x, k.shape[2])):
            m = ops.causal_mask(t, k.shape[2], device=x.device) if causal else mask
            y = ops.attention(q, k, v, m, dropout=p, training=self.training)
        else:
            if causal and k.shape[2] != t:  # new queries after cached keys: offset causal mask
                mask, causal = ops.causal_mask(t, k.shape[2], device=x.device), False
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        y = ops.merge_heads(y)  # (B, T, n_head * head_dim)
        return self.proj(y)

    def attend_one(self, x: torch.Tensor, rope, kv_cache, layer: int,
                   norm: nn.Module | None = None) -> torch.Tensor | None:
        """A batch-1 decode step's attention: the `qkv` product (of `norm(x)` when a norm is given, the block's: in
        the same call, `normed_product`), then one C call (`gemv.Kernel.attend`) that puts the new query and key
        heads through QK-norm and RoPE (when the model has them), writes the new position's keys and values into
        the cache in place and lets the query's heads attend over it; the heads' output (1, 1, n_head * head_dim),
        before `proj`. None where that call does not apply (no kernel, autograd or autocast on, a forced "explicit"
        mode, another dtype or device in the cache or the tables, a hooked QK-norm): `forward` then runs the
        general path, which gives the same numbers to float rounding (tested)."""
        kernel = gemv.load()
        cache_k = kv_cache.k
        if (kernel is None or self.mode == "explicit" or self.training or torch.is_grad_enabled()
                or torch.is_autocast_enabled("cpu") or not x.is_cpu or cache_k.dtype is not x.dtype
                or not cache_k.is_cpu
                or x.dtype not in (torch.float32, torch.bfloat16) or self.head_dim > gemv.MAX_HEAD_DIM
                or kv_cache.pos >= kv_cache.max_len):
            return None
        h, hk, d = self.n_head, self.n_kv_head, self.head_dim
        norms = {}  # QK-norm's weights, for the call
        if self.q_norm is not None:
            q_w, k_w = self.q_norm.weight, self.k_norm.weight
            if (q_w.dtype is not x.dtype or k_w.dtype is not x.dtype or q_w.numel() != d or k_w.numel() != d
                    or hooked(self.q_norm) or hooked(self.k_norm)):
                return None
            norms = dict(q_norm=q_w.data_ptr(), k_norm=k_w.data_ptr(), eps=self.q_norm.eps)
        tables = {}  # the position's RoPE rows, for the call
        if rope is not None:
            cos, sin = rope
            if (cos.dtype not in (torch.float32, x.dtype) or sin.dtype is not cos.dtype or cos.numel() != d
                    or sin.numel() != d or not (cos.is_contiguous() and sin.is_contiguous())):
                return None
            tables = dict(cos=cos.data_ptr(), sin=sin.data_ptr(), table_bf16=cos.dtype is torch.bfloat16)
        qkv = self.qkv(x) if norm is None else normed_product(norm, self.qkv, x)
        qkv = qkv.contiguous()  # (1, 1, (n_head + 2 n_kv_head) head_dim): queries, keys, values, head after head
        el, base = qkv.element_size(), qkv.data_ptr()
        k_cache, v_cache, head_stride = kv_cache.addresses(layer)
        y = torch.empty(1, 1, h * d, dtype=x.dtype)
        kernel.attend(base, base + h * d * el, base + (h + hk) * d * el, k_cache, v_cache, y.data_ptr(), h, hk, d,
                      kv_cache.pos, head_stride, x.dtype is torch.bfloat16, **norms, **tables)
        return y


class MLP(nn.Module):
    """Position-wise feed-forward: GELU (GPT-2's tanh form, or exact) or SwiGLU (Llama), hidden width
    config.hidden_dim."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        self.approximate = "none" if config.mlp == "gelu_exact" else "tanh"
        self.fc = nn.Linear(config.n_embd, config.hidden_dim, bias=config.bias)
        if self.swiglu:
            self.gate = nn.Linear(config.n_embd, config.hidden_dim, bias=config.bias)
        self.proj = nn.Linear(config.hidden_dim, config.n_embd, bias=config.bias)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The activations `proj` reads (..., hidden_dim)."""
        if self.swiglu:
            return F.silu(self.gate(x)) * self.fc(x)
        return F.gelu(self.fc(x), approximate=self.approximate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.hidden(x))

    def hidden_one(self, x: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        """`hidden(norm(x))` (`norm` None: `hidden(x)`) for one row of a decode step (no autograd, no autocast):
        where `fc` (and `gate`) run through the C kernel (FastLinears of x's dtype, see model.fast_linear) and
        `kernel_norm` takes `norm`, the norm, the products and the activation in one call (`gemv.Kernel.bind_mlp`,
        bound once per FastLinear; QuantLinears of one scheme: `_hidden_one_quantized`); else `norm_row`, then
        `hidden`. Equal to float rounding."""
        fc = self.fc
        if type(fc) is QuantLinear:
            return self._hidden_one_quantized(x, norm)
        if type(fc) is not FastLinear or fc.product is None:  # no kernel products to fuse
            return self.hidden(x if norm is None else norm_row(norm, x))
        gate = self.gate if self.swiglu else None
        if gate is None and norm is not None and not fc.weight.is_contiguous():
            # stored (in, out) (an imported GPT-2's Conv1D matrix): the norm inside fc's product, GELU after it
            return F.gelu(normed_product(norm, fc, x), approximate=self.approximate)
        entry = _MLP_CALLS.get(fc)
        if entry is None or entry[0]() is not gate or entry[1]() is not norm or (norm is not None and hooked(norm)):
            params = None if norm is None else kernel_norm(norm, x)
            if (norm is not None and params is None) or not all(
                    type(m) is FastLinear and m.product is not None and m.dtype is x.dtype
                    and m.weight.is_contiguous() for m in (fc, gate) if m is not None):  # (out, in) as the call reads
                return self.hidden(x if norm is None else norm_row(norm, x))
            act = "swiglu" if self.swiglu else "gelu" if self.approximate == "none" else "gelu_tanh"
            call = gemv.load().bind_mlp(fc.weight, fc.bias, act, None if gate is None else gate.weight,
                                        None if gate is None else gate.bias, norm=params)
            entry = _MLP_CALLS[fc] = (_ref(gate), _ref(norm), call)
        return entry[2](x)

    def _hidden_one_quantized(self, x: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:
        """`hidden_one` for a QuantLinear `fc` (and `gate` of its scheme): the norm, both products (the input
        quantized once) and the activation in one call (`gemv.Kernel.bind_mlp_quantized`, bound to the layers'
        products as they are now, rebound when they change); else `norm_row`, then `hidden`."""
        fc, gate = self.fc, self.gate if self.swiglu else None
        bases = tuple(None if m is None else m.one_row_product(x) if type(m) is QuantLinear else False
                      for m in (fc, gate))
        if bases[0] is None or (gate is not None and (not bases[1] or gate.scheme != fc.scheme)):
            return self.hidden(x if norm is None else norm_row(norm, x))
        entry = _MLP_CALLS.get(fc)
        if (entry is None or entry[0]() is not gate or entry[1]() is not norm or entry[3] != bases
                or (norm is not None and hooked(norm))):
            params = None if norm is None else kernel_norm(norm, x)
            if norm is not None and params is None:
                return self.hidden(norm_row(norm, x))
            act = "swiglu" if self.swiglu else "gelu" if self.approximate == "none" else "gelu_tanh"
            call = gemv.load().bind_mlp_quantized(bases[0], act, bases[1], norm=params)
            entry = _MLP_CALLS[fc] = (_ref(gate), _ref(norm), call, bases)
        return entry[2](x)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)), dropout on each branch."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(config)
        self.attn = Attention(config)
        self.norm2 = make_norm(config)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, rope=None, mask=None, kv_cache=None, layer: int = 0):
        if kv_cache is not None and mask is None and not self.training and x.numel() == x.shape[-1]:
            y = self.decode_one(x, rope, kv_cache, layer)
            if y is not None:
                return y
        a = self.attn(self.norm1(x), rope, mask, kv_cache, layer)
        x = x + (self.drop(a) if self.training else a)  # eval: no dropout call (decoding counts every op)
        m = self.mlp(self.norm2(x))
        return x + (self.drop(m) if self.training else m)

    def decode_one(self, x: torch.Tensor, rope, kv_cache, layer: int) -> torch.Tensor | None:
        """`forward` for a batch-1 decode step (one row, a KV cache, eval), with fewer calls, each through the
        same modules and parameters: attention `norm1` and the `qkv` product in one C call, then one more for
        QK-norm, RoPE, the cache and the heads (`Attention.attend_one`); `norm2`, the MLP's products and its
        activation one call (`MLP.hidden_one`); each residual added by the kernel as it writes the projection
        (`fast_linear.linear_plus`; the second in place, into the block's own new tensor). None (nothing
        done) where the attention call does not apply or a hook watches the attention or the MLP (whose
        forwards this skips): `forward` then runs the general path, equal to float rounding (tested)."""
        attn, mlp = self.attn, self.mlp
        if hooked(attn) or hooked(mlp):
            return None
        y = attn.attend_one(x, rope, kv_cache, layer, norm=self.norm1)  # (1, 1, n_head * head_dim)
        if y is None:
            return None
        x = linear_plus(attn.proj, y, x)  # x + proj(y): a new tensor (the caller's x is left as it was)
        return linear_plus(mlp.proj, mlp.hidden_one(x, norm=self.norm2), x, in_place=True)
