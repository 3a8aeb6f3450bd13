"""compress.prune and model.masks: exact sparsity per scope, masks that keep zeros at zero through the training
loop and a save/load, structured pruning equal to zeroing the removed parts, the command and its checkpoint."""

import json

import pytest
import torch

from scratchllm.checkpoint import load_model, save_checkpoint
from scratchllm.checkpoint.folder import MASKS_FILE, read_state
from scratchllm.cli import main
from scratchllm.compress.prune import (
    head_scores,
    neuron_scores,
    prunable,
    prune_heads,
    prune_model,
    prune_neurons,
    prune_unstructured,
    recover,
)
from scratchllm.config.data import DataConfig
from scratchllm.config.model import ModelConfig
from scratchllm.config.tokenizer import TokenizerConfig
from scratchllm.config.train import TrainConfig
from scratchllm.errors import UserError
from scratchllm.model import GPT
from scratchllm.model.masks import masks, pack_mask, unpack_mask
from scratchllm.train.loop import train
from scratchllm.train.losses import lm_loss

GPT2ISH = dict(vocab_size=64, context_length=16, n_layer=2, n_head=4, n_embd=32)
LLAMAISH = dict(GPT2ISH, n_kv_head=2, norm="rmsnorm", mlp="swiglu", position="rope", bias=False, qkv_bias=False,
                tie_weights=False, qk_norm=True)


def model_of(kw, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(**kw)).eval()


def ids(seed=1, t=12):
    return torch.randint(0, 64, (2, t), generator=torch.Generator().manual_seed(seed))


def zeros_of(model) -> dict[str, int]:
    return {n: int((m.weight == 0).sum()) for n, m in prunable(model).items()}


# --- masks ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 5), (8, 8), (1, 1), (7, 13)])
def test_mask_packing_is_exact(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (mask.numel() + 7) // 8
    assert torch.equal(unpack_mask(packed, shape), mask)


# --- unstructured -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.3, 0.5, 0.9])
def test_layer_scope_prunes_exactly_s_of_each_layer_and_the_smallest(sparsity):
    model = model_of(GPT2ISH)
    before = {n: m.weight.detach().clone() for n, m in prunable(model).items()}
    report = prune_unstructured(model, sparsity, "layer")
    for name, layer in prunable(model).items():
        w, old = layer.weight, before[name]
        assert int((w == 0).sum()) == round(sparsity * w.numel()), name
        if 0 < sparsity:
            kept, gone = old[w != 0].abs(), old[w == 0].abs()
            assert gone.max() <= kept.min()  # the smallest went
        assert torch.equal(w[w != 0], old[w != 0])  # the rest untouched
    assert set(report["layers"]) == (set(prunable(model)) if sparsity else set())
    # nothing else is pruned: embeddings, head, norms, biases
    assert int((model.tok_emb.weight == 0).sum()) == 0
    assert set(masks(model)) == (set(prunable(model)) if sparsity else set())


@pytest.mark.parametrize("sparsity", [0.1, 0.5])
def test_global_scope_prunes_exactly_s_of_all_layers_together(sparsity):
    model = model_of(GPT2ISH)
    before = torch.cat([m.weight.detach().abs().flatten() for m in prunable(model).values()])
    report = prune_unstructured(model, sparsity, "global")
    after = torch.cat([m.weight.detach().flatten() for m in prunable(model).values()])
    assert int((after == 0).sum()) == round(sparsity * after.numel())
    assert before[after == 0].max() <= before[after != 0].min()
    assert report["sparsity_of_masked"] == pytest.approx(sparsity, abs=1e-4)
    per_layer = [v for v in report["layers"].values()]
    assert max(per_layer) > min(per_layer)  # the residual projections (smaller init) lose more


def test_pruning_again_keeps_the_first_masks():
    model = model_of(GPT2ISH)
    prune_unstructured(model, 0.5)
    first = {n: m.clone() for n, m in masks(model).items()}
    prune_unstructured(model, 0.2)  # a lower sparsity: the first zeros stay
    for n, m in masks(model).items():
        assert torch.equal(m, first[n])


# --- masks through training and files ----------------------------------------------------------------------------
class Windows:
    def __init__(self, n=64, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.data = torch.randint(0, 64, (n, 17), generator=g)

    def __iter__(self):
        i = 0
        while True:
            row = self.data[(i * 4) % 60:(i * 4) % 60 + 4]
            yield row[:, :-1], row[:, 1:]
            i += 1


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "muon"])
def test_zeros_stay_zero_through_the_training_loop(optimizer, tmp_path):
    model = model_of(LLAMAISH if optimizer == "muon" else GPT2ISH)
    prune_unstructured(model, 0.5, "global")
    pruned = {n: m.weight == 0 for n, m in prunable(model).items()}
    start = {n: m.weight.detach().clone() for n, m in prunable(model).items()}
    config = TrainConfig(max_steps=5, lr=1e-2, warmup_steps=0, batch_size=4, progress=False, precision="fp32",
                         optimizer=optimizer, eval_interval=100)
    train(model, Windows(), lm_loss, config)
    # save and load: what is written has the zeros (Muon's dense update moves pruned weights until saved)
    loaded, _, _ = load_model(save_checkpoint(tmp_path / "ck", model))
    for name, layer in prunable(loaded).items():
        assert (layer.weight[pruned[name]] == 0).all(), name
        assert not torch.equal(layer.weight, start[name]), name  # it did train
    assert {n: m for n, m in masks(loaded).items()}.keys() == pruned.keys()
    for name, mask in masks(loaded).items():
        assert torch.equal(mask, ~pruned[name])
    if optimizer != "muon":  # elementwise optimizers never move a zero-gradient weight: zero in memory too
        for name, layer in prunable(model).items():
            assert (layer.weight[pruned[name]] == 0).all()


def test_masks_survive_save_load_and_a_second_finetune(tmp_path):
    model = model_of(GPT2ISH)
    prune_unstructured(model, 0.3)
    folder = save_checkpoint(tmp_path / "ck", model)
    bits = sum(m.numel() for m in masks(model).values())
    assert (folder / MASKS_FILE).stat().st_size < bits // 8 + 1024  # a bit a weight, and the header
    loaded, _, _ = load_model(folder)
    assert torch.equal(loaded(ids()), model(ids()))
    pruned = {n: ~m for n, m in masks(loaded).items()}
    config = TrainConfig(max_steps=3, lr=1e-2, warmup_steps=0, batch_size=4, progress=False, precision="fp32",
                         eval_interval=100)
    train(loaded, Windows(seed=1), lm_loss, config)
    again, _, _ = load_model(save_checkpoint(tmp_path / "ck2", loaded))
    for name, layer in prunable(again).items():
        assert (layer.weight[pruned[name]] == 0).all() and (layer.weight[~pruned[name]] != 0).all()


# --- structured ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [GPT2ISH, LLAMAISH], ids=["gpt2", "llama-gqa"])
def test_removing_heads_equals_zeroing_their_output_columns(kw):
    model = model_of(kw)
    c = model.config
    rep, d = c.n_head // c.kv_heads, c.head_dim
    new, report = prune_heads(model, 0.5)
    nc = new.config
    assert nc.kv_heads == c.kv_heads // 2 and nc.n_head == c.n_head // 2 and nc.head_dim == d
    for block in new.blocks:
        assert block.attn.qkv.weight.shape == ((nc.n_head + 2 * nc.kv_heads) * d, c.n_embd)
        assert block.attn.proj.weight.shape == (c.n_embd, nc.n_head * d)
    # the reference: the unpruned model with the removed heads' output columns zeroed
    ref = model_of(kw)
    with torch.no_grad():
        for block, groups in zip(ref.blocks, report["kept_kv_heads"], strict=True):
            assert groups == torch.topk(head_scores(block.attn), len(groups)).indices.sort().values.tolist()
            for g in set(range(c.kv_heads)) - set(groups):
                block.attn.proj.weight[:, g * rep * d:(g + 1) * rep * d] = 0
    x = ids()
    torch.testing.assert_close(new(x), ref(x), rtol=1e-5, atol=1e-5)
    assert report["params_after"] == new.num_params() < model.num_params()


@pytest.mark.parametrize("kw", [GPT2ISH, LLAMAISH], ids=["gpt2", "llama-swiglu"])
def test_removing_neurons_equals_zeroing_their_proj_columns(kw):
    model = model_of(kw)
    hidden = model.config.hidden_dim
    new, report = prune_neurons(model, 0.3)
    keep = hidden - round(0.3 * hidden)
    assert new.config.mlp_hidden == keep == report["mlp_hidden_after"]
    assert new.blocks[0].mlp.fc.weight.shape == (keep, 32) and new.blocks[0].mlp.proj.weight.shape == (32, keep)
    ref = model_of(kw)
    with torch.no_grad():
        for block in ref.blocks:
            gone = torch.topk(neuron_scores(block.mlp), hidden - keep, largest=False).indices
            block.mlp.proj.weight[:, gone] = 0
    x = ids()
    torch.testing.assert_close(new(x), ref(x), rtol=1e-5, atol=1e-5)


def test_structured_after_unstructured_keeps_the_masks_sliced(tmp_path):
    model = model_of(GPT2ISH)
    prune_unstructured(model, 0.4)
    new, _ = prune_neurons(model, 0.5)
    for name, layer in prunable(new).items():
        assert torch.equal(layer.weight != 0, masks(new)[name]), name
    loaded, _, _ = load_model(save_checkpoint(tmp_path / "ck", new))
    torch.testing.assert_close(loaded(ids()), new(ids()))


def test_a_structurally_pruned_model_saves_loads_and_generates(tmp_path):
    from scratchllm.config.sample import SampleConfig
    from scratchllm.generate import generate

    new, _ = prune_heads(model_of(GPT2ISH), 0.5)
    new, _ = prune_neurons(new, 0.5)
    loaded, _, _ = load_model(save_checkpoint(tmp_path / "ck", new))
    assert loaded.config.n_head == 2 and loaded.config.head_size == 8 and loaded.config.mlp_hidden == 64
    assert not (tmp_path / "ck" / MASKS_FILE).exists()
    prompt = ids(t=4)[0].tolist()
    sample = SampleConfig(max_new_tokens=8, temperature=0.0)
    out = generate(loaded, prompt, sample)
    assert out == generate(new, prompt, sample) and len(out) >= 8
    # the KV-cached decode equals the full forward's greedy choice, with the smaller heads
    seq = prompt + out[-8:] if len(out) == 8 else out
    logits = loaded(torch.tensor([seq[:-1]]))[0]
    assert logits[len(prompt) - 1:].argmax(-1).tolist() == seq[len(prompt):]


def test_bad_requests_are_user_errors():
    model = model_of(GPT2ISH)
    for args, msg in [((1.0,), "must be in [0, 1)"), ((-0.1,), "must be in [0, 1)"),
                      ((0.5, "layers"), "use heads or neurons"), ((0.5, None, "all"), "use layer or global"),
                      ((0.5, "heads", "global"), "--scope global is for unstructured")]:
        with pytest.raises(UserError, match=msg.replace("[", r"\[").replace(")", r"\)")):
            prune_model(model, *args)
    from scratchllm.compress.quantize import QuantScheme, quantize_model

    quantize_model(model, QuantScheme(8))
    with pytest.raises(UserError, match="quantized"):
        prune_model(model, 0.5)


# --- recovery and the command ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A scratchllm run trained for a few steps on a small char corpus (its prepared data beside it)."""
    from scratchllm.config.train import RunConfig
    from scratchllm.train.pretrain import pretrain

    root = tmp_path_factory.mktemp("prune_run")
    corpus = root / "corpus"
    corpus.mkdir()
    words = "to be or not to be that is the question whether tis nobler in the mind to suffer".split()
    g = torch.Generator().manual_seed(0)
    for i in range(12):
        text = " ".join(words[j] for j in torch.randint(0, len(words), (300,), generator=g).tolist())
        (corpus / f"doc{i:02d}.txt").write_text(text + "\n")
    run = RunConfig(name="tiny", runs_dir=str(root / "runs"),
                    data=DataConfig(dataset=str(corpus), tokenizer=TokenizerConfig(kind="char"), dedup=False,
                                    near_dedup=False, val_fraction=0.2),
                    model=ModelConfig(n_layer=2, n_head=4, n_embd=32, context_length=32),
                    train=TrainConfig(max_steps=30, batch_size=8, eval_interval=30, eval_batches=2, lr=3e-3,
                                      warmup_steps=3, progress=False, precision="fp32", peak_flops=1e9, threads=1))
    run = run.replace(sample=run.sample.replace(max_new_tokens=0))
    pretrain(run, progress=False)
    return root / "runs" / "tiny"


def test_prune_command_with_recovery_keeps_zeros_and_lowers_the_loss(run_folder, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(["prune", str(run_folder), "--sparsity", "0.6", "--scope", "global", "--recover-steps", "20",
                 "--lr", "3e-3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "recovered 20 steps" in printed
    state = read_state(out)
    assert state["pruning"]["scope"] == "global" and state["recovery"]["steps"] == 20
    assert state["data_dir"] and (out / MASKS_FILE).is_file() and (out / "MODEL_CARD.md").is_file()
    model, tok, meta = load_model(out)
    zeros = sum(zeros_of(model).values())
    total = sum(m.weight.numel() for m in prunable(model).values())
    assert zeros == round(0.6 * total)  # exactly the pruned ones, after 20 steps of finetuning
    for name, mask in masks(model).items():
        assert torch.equal(model.get_submodule(name).weight != 0, mask)
    # recovery helps: the pruned model without it scores worse on the validation split
    raw_out = str(tmp_path / "raw")
    assert main(["prune", str(run_folder), "--sparsity", "0.6", "--scope", "global", "--out", raw_out]) == 0
    from scratchllm.data.prepare import load_prepared

    prepared = load_prepared(state["data_dir"])
    raw, _, _ = load_model(tmp_path / "raw")
    before = recover(raw, prepared, 1, lr=1e-9, progress=False).last_eval["val_loss"]  # ~ no change: a measurement
    assert state["recovery"]["val_loss"] < before
    # the cards: the recovery's own compute (20 steps x batch x context tokens) on one, none on the other
    card = (out / "MODEL_CARD.md").read_text()
    tokens = 20 * state["recovery"]["batch_size"] * model.config.context_length
    assert "## Intended use" in card and "## Known limitations" in card and f"{tokens:,}" in card
    assert "## Intended use" in (tmp_path / "raw" / "MODEL_CARD.md").read_text()


def test_prune_command_structured_then_generate_and_eval(run_folder, tmp_path, capsys):
    out = tmp_path / "heads"
    assert main(["prune", str(run_folder), "--sparsity", "0.5", "--structured", "heads", "--out", str(out)]) == 0
    assert "4 -> 2 heads per block" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["n_head"] == 2 and config["head_size"] == 8
    assert main(["generate", "-m", str(out), "to be", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("to be")
    # its state.json carries the run's prepared data: `eval --split val` scores the same held-out text
    dataset = read_state(out)["run_config"]["data"]["dataset"]
    assert main(["eval", "perplexity", "-m", str(out), "--dataset", dataset, "--split", "val", "--quiet"]) == 0
    assert "perplexity" in capsys.readouterr().out
