"""train.pretrain's checks ask the model's own rules: the memory estimate counts attention scores
exactly when the layer would compute them (`model.layers.explicit_attention`) and parameters as
`model.info` counts them; the hint after a stop names the folder a run lives in."""

from pathlib import Path

from scratchllm.config.model import ModelConfig
from scratchllm.config.train import RunConfig
from scratchllm.model import info
from scratchllm.model.layers import explicit_attention
from scratchllm.train.pretrain import estimate_training_memory, resume_command


def test_memory_estimate_follows_the_attention_rule_and_the_parameter_count():
    def scores(c, precision, device):  # the (B, n_head, T, T) part: the estimate with minus without
        return (estimate_training_memory(c, 2, precision, device)
                - estimate_training_memory(c.replace(attention="sdpa"), 2, precision, device))

    for t in (64, 512, 513):
        c = ModelConfig.preset("tiny", context_length=t)
        for precision in ("fp32", "bf16"):
            for device in ("cpu", "cuda"):
                explicit = explicit_attention("auto", device, True, precision == "bf16", t)
                assert (scores(c, precision, device) > 0) == explicit, (t, precision, device)
    assert explicit_attention("auto", "cpu", True, True, 512) and not explicit_attention("auto", "cpu", True, True, 513)
    # weights, gradients and AdamW's two moments: 16 bytes for each parameter model.info counts
    c = ModelConfig.preset("tiny")
    bigger = c.replace(tie_weights=False)
    grown = estimate_training_memory(bigger, 2) - estimate_training_memory(c, 2)
    assert grown == 16 * (info.num_params(bigger) - info.num_params(c)) == 16 * c.vocab_size * c.n_embd


def test_the_hint_after_a_stop_names_the_runs_folder_and_the_recipe():
    run = RunConfig(runs_dir="elsewhere/runs")
    cmd = resume_command(run, Path("elsewhere/runs/demo-2"), "--config configs/demo.toml")
    assert cmd == "scratchllm train --config configs/demo.toml --runs_dir elsewhere/runs --name demo-2 --resume"
    assert "--config <recipe>" in resume_command(run, Path("elsewhere/runs/demo-2"))  # the recipe unknown
