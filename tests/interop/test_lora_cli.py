"""`scratchllm lora extract|merge` and LoRA folders in the commands that take any model (generate, export hf):
the adapters alone with their base recorded, merged checkpoints any command reads, one error line each."""

import json

import pytest
import torch

from scratchllm.checkpoint.folder import (
    ADAPTERS_CONFIG,
    ADAPTERS_FILE,
    MODEL_FILE,
    save_checkpoint,
    step_name,
)
from scratchllm.checkpoint.load import load_model
from scratchllm.checkpoint.pointers import LATEST, write_pointer
from scratchllm.cli import main
from scratchllm.config.lora import LoraConfig
from scratchllm.config.model import ModelConfig
from scratchllm.interop.load import GENERATION_FILE, load_any
from scratchllm.model import GPT
from scratchllm.model.lora import add_lora, has_lora, lora_parameters
from scratchllm.tokenizer.char import CharTokenizer

TOK = CharTokenizer.train("to be or not to be, that is the question\n")
X = torch.randint(0, TOK.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))


def tiny(seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig.preset("tiny", vocab_size=TOK.vocab_size, n_embd=32)).eval()


@pytest.fixture
def lora_run(tmp_path):
    """(base checkpoint, LoRA run folder whose state.json records init_from, the LoRA model)."""
    base = save_checkpoint(tmp_path / "base", tiny(), state={"step": 100}, tokenizer=TOK)
    model = tiny()
    add_lora(model, LoraConfig(r=4, alpha=8, targets=("attn", "mlp")))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    run = tmp_path / "run"
    ck = save_checkpoint(run / "checkpoints" / step_name(5), model, state={"step": 5, "init_from": str(base)},
                         tokenizer=TOK)
    write_pointer(run, LATEST, ck)
    return base, run, model


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_extract_writes_the_adapters_alone_with_their_base(lora_run, tmp_path, capsys):
    base, run, model = lora_run
    out = tmp_path / "adapters"
    assert main(["lora", "extract", str(run), "--out", str(out)]) == 0
    assert f"wrote adapters {out} (r=4 on 8 layers; base {base})" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [ADAPTERS_CONFIG, ADAPTERS_FILE, "state.json"]
    assert json.loads((out / ADAPTERS_CONFIG).read_text())["base"] == str(base)
    loaded, tok, meta = load_any(out)  # what generate -m and export read
    assert not has_lora(loaded) and meta["lora"]["merged"] and tok is not None
    torch.testing.assert_close(loaded(X), model(X), rtol=1e-5, atol=1e-5)
    # --base records another path (the run's init_from is not needed)
    assert main(["lora", "extract", str(run), "--out", str(tmp_path / "a2"), "--base", "models/base"]) == 0
    assert json.loads((tmp_path / "a2" / ADAPTERS_CONFIG).read_text())["base"] == "models/base"


def test_merge_of_an_adapters_folder_or_a_run_writes_a_plain_checkpoint(lora_run, tmp_path, capsys):
    base, run, model = lora_run
    assert main(["lora", "extract", str(run), "--out", str(tmp_path / "adapters")]) == 0
    for source in (tmp_path / "adapters", run):
        out = tmp_path / f"merged-{source.name}"
        assert main(["lora", "merge", str(source), "--out", str(out)]) == 0
        assert f"wrote checkpoint {out} ({source} merged: r=4 on 8 layers)" in capsys.readouterr().out
        assert not (out / ADAPTERS_FILE).exists() and (out / MODEL_FILE).is_file() and (out / GENERATION_FILE).is_file()
        merged, tok, meta = load_model(out, merge=False)
        assert not has_lora(merged) and "lora" not in meta and meta["lora_merged"]["r"] == 4
        assert tok.decode(tok.encode("to be")) == "to be"
        torch.testing.assert_close(merged(X), model(X), rtol=1e-5, atol=1e-5)
    # an adapters folder whose base moved: --base names it
    moved = base.rename(tmp_path / "moved")
    assert main(["lora", "merge", str(tmp_path / "adapters"), "--out", str(tmp_path / "m3")]) == 2
    assert "the base model" in one_error(capsys) and not (tmp_path / "m3").exists()
    assert main(["lora", "merge", str(tmp_path / "adapters"), "--out", str(tmp_path / "m3"), "--base",
                 str(moved)]) == 0
    torch.testing.assert_close(load_model(tmp_path / "m3")[0](X), model(X), rtol=1e-5, atol=1e-5)


def test_generate_and_export_read_lora_folders_merged(lora_run, tmp_path, capsys):
    from scratchllm.interop.hf import read_hf

    _, run, model = lora_run
    assert main(["lora", "extract", str(run), "--out", str(tmp_path / "adapters")]) == 0
    for source in (run, tmp_path / "adapters"):
        capsys.readouterr()
        assert main(["generate", "-m", str(source), "to be", "--max-new-tokens", "4", "--temperature", "0"]) == 0
        assert capsys.readouterr().out.startswith("to be")
    assert main(["export", "hf", str(run), "--out", str(tmp_path / "hf")]) == 0
    exported, _, _ = read_hf(tmp_path / "hf")
    torch.testing.assert_close(exported(X), model(X), rtol=1e-5, atol=1e-5)  # the merged weights


def test_each_mistake_is_one_error_line_and_nothing_written(lora_run, tmp_path, capsys):
    base, run, _ = lora_run
    no_base = tmp_path / "nobase"
    state = json.loads((run / "checkpoints" / step_name(5) / "state.json").read_text())
    model, _, _ = load_model(run, merge=False)
    ck = save_checkpoint(no_base / "checkpoints" / step_name(5), model, state={"step": 5}, tokenizer=TOK)
    write_pointer(no_base, LATEST, ck)
    assert state["init_from"] == str(base)
    before = sorted(p for p in tmp_path.rglob("*"))
    out = str(tmp_path / "out")
    for argv, message in [
        (["lora", "extract", str(base), "--out", out], "has no LoRA adapters (it was trained without --lora)"),
        (["lora", "extract", str(no_base), "--out", out], "records no base model (init_from); name it with --base"),
        (["lora", "extract", str(run), "--out", str(base)], "already exists"),
        (["lora", "extract", str(tmp_path / "nowhere"), "--out", out], "does not exist"),
        (["lora", "merge", str(base), "--out", out], "has no LoRA adapters to merge"),
        (["lora", "merge", str(run), "--out", out, "--base", str(base)], "--base is for a folder of adapters alone"),
    ]:
        assert main(argv) == 2, argv
        assert message in one_error(capsys), argv
    assert sorted(p for p in tmp_path.rglob("*")) == before
