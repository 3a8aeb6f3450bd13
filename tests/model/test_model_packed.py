"""model.packed: packed linears give F.linear's results, only where they apply, and generation with
them gives the same tokens as without."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.config.model import ModelConfig
from scratchllm.config.sample import SampleConfig
from scratchllm.generate.engine import generate
from scratchllm.model import GPT
from scratchllm.model import packed as P

pytestmark = pytest.mark.skipif(not P._ops_available(), reason="this torch build has no oneDNN linear ops")

# big enough that every linear is packed (smallest: 512 x 1024 = 2^19 weights), small enough to be quick
MID = dict(n_layer=2, n_head=8, n_embd=1024, context_length=64, vocab_size=600, dropout=0.0)


def test_packed_linear_equals_f_linear_and_falls_back_where_it_does_not_apply():
    torch.manual_seed(0)
    lin = nn.Linear(768, 1024)
    packed = P.PackedLinear(lin)
    with torch.no_grad():
        for shape in [(1, 1, 768), (2, 5, 768), (64, 768)]:
            x = torch.randn(shape)
            y = packed(x)
            assert y.shape == (*shape[:-1], 1024)
            assert torch.allclose(y, F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
        big = torch.randn(P.MAX_ROWS + 1, 768)  # more rows: F.linear itself, bit for bit
        assert torch.equal(packed(big), F.linear(big, lin.weight, lin.bias))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # under autocast: F.linear, in bf16
            assert packed(torch.randn(1, 768)).dtype == torch.bfloat16
    x = torch.randn(1, 768, requires_grad=True)  # with autograd on: F.linear, so gradients flow
    packed(x).sum().backward()
    assert x.grad is not None and lin.weight.grad is not None


def test_packed_linears_swaps_large_linears_and_puts_them_back():
    torch.manual_seed(0)
    model = GPT(ModelConfig(**MID)).eval()
    keys = list(model.state_dict())
    originals = [m for m in model.modules() if isinstance(m, nn.Linear)]
    with P.packed_linears(model):
        inside = [m for m in model.modules() if isinstance(m, P.PackedLinear)]
        assert len(inside) == len(originals)
        assert model.lm_head.weight is model.tok_emb.weight  # the tied head still reads as tied
    assert [m for m in model.modules() if isinstance(m, nn.Linear)] == originals
    assert list(model.state_dict()) == keys
    tiny = GPT(ModelConfig.preset("tiny"))
    assert not P.worth_packing(tiny)  # small weights stay in cache: nothing to gain
    assert not P.worth_packing(GPT(ModelConfig(**MID)).bfloat16())


def test_packed_forward_and_greedy_generation_match_plain(monkeypatch):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**MID)).eval()
    idx = torch.randint(0, MID["vocab_size"], (1, 20))
    with torch.inference_mode():
        plain_logits = model(idx)
        with P.packed_linears(model):
            packed_logits = model(idx)
    assert torch.allclose(packed_logits, plain_logits, rtol=1e-4, atol=1e-4)
    prompt = idx[0].tolist()
    config = SampleConfig(temperature=0.0, max_new_tokens=30)
    packed_tokens = generate(model, prompt, config)
    monkeypatch.setattr(P, "MIN_WEIGHTS", 2**62)  # nothing packed
    assert generate(model, prompt, config) == packed_tokens
