"""Every model card states what a reader needs to trust or question the model: a real (tiny) training run's
card against the run's own numbers (tokens = steps x batch x context, FLOPs by model.info's formula, core-hours
from its wall time and threads, energy from the stated watts), its data's source, licence, checksum and cleaning
report; an import's and a quantized copy's cards carry the run's data and compute; limitations by kind."""

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from scratchllm.cli import main
from scratchllm.config.model import ModelConfig
from scratchllm.data.sources import DATASETS
from scratchllm.evaluate import card as cards
from scratchllm.evaluate.card import (
    HEADING,
    WATTS_PER_CORE,
    clean_lines,
    data_provenance,
    derived_lines,
    training_compute,
)
from scratchllm.model.info import train_flops_per_token
from scratchllm.train.logging import model_card

RECIPE = """name = "tiny"
prompt = "I"
[data]
dataset = "the-verdict"
data_dir = "{data}"
tokenizer = {{ kind = "char" }}
near_dedup = false
[model]
n_layer = 1
n_head = 2
n_embd = 16
context_length = 16
[train]
max_steps = 3
batch_size = 2
eval_interval = 3
eval_batches = 1
peak_flops = 1e9
threads = 1
[sample]
max_new_tokens = 4
"""


def bullets(text: str, section: str) -> dict[str, str]:
    """The "- key: value" lines of a card's "## section"."""
    body = cards.card_section(text, section)
    assert body is not None, f"no ## {section}"
    return dict(m.groups() for m in re.finditer(r"^- ([^:\n]+): (.*)$", body, re.M))


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("transparency")
    recipe = root / "tiny.toml"
    recipe.write_text(RECIPE.format(data=shared_data), encoding="utf-8")
    assert main(["train", "--config", str(recipe), "--runs_dir", str(root / "runs"), "--quiet"]) == 0
    return root / "runs" / "tiny"


def test_a_runs_card_against_the_runs_own_numbers(run):
    text = (run / "MODEL_CARD.md").read_text(encoding="utf-8")
    state = json.loads(next((run / "checkpoints").glob("step-*/state.json")).read_text())
    steps, batch, context = 3, 2, 16
    assert state["step"] == steps and state["tokens"] == steps * batch * context
    compute = bullets(text, "Training compute")
    assert compute["tokens seen"] == f"{steps * batch * context:,}"
    flops = train_flops_per_token(ModelConfig(**json.loads((run / "run_config.json").read_text())["model"]),
                                  context) * steps * batch * context
    assert compute["FLOPs"] == f"{flops:.3e} ({flops:,})" and "6N + 12·L·d·T" in compute["FLOPs formula"]
    seconds = float(compute["wall time (s)"])  # the run's clock when the card was written: after the last save
    assert state["elapsed"] <= seconds < state["elapsed"] + 10
    assert compute["torch threads"] == "1" and compute["device"] == "cpu"
    assert float(compute["cpu core-hours"]) == pytest.approx(seconds * 1 / 3600, rel=1e-3)
    assert float(compute["energy (kWh)"]) == pytest.approx(seconds * 1 / 3600 * WATTS_PER_CORE / 1000, rel=1e-3)
    assert f"x {WATTS_PER_CORE:g} W per busy core" in compute["energy assumptions"]


def test_a_runs_card_states_its_datas_provenance_and_cleaning(run, shared_data):
    text = (run / "MODEL_CARD.md").read_text(encoding="utf-8")
    data = bullets(text, "Data provenance")
    src = DATASETS["the-verdict"]
    assert data["dataset"] == "the-verdict" and data["source"] == src.url and data["licence"] == src.licence
    assert data["sha256"] == src.sha256 == hashlib.sha256((shared_data / "the-verdict.txt").read_bytes()).hexdigest()
    prepared = Path(data["prepared in"])
    report = json.loads((prepared / "clean_report.json").read_text())
    cleaning = cards.card_section(text, "Data provenance")
    assert (f"- cleaning: {report['documents_in']:,} documents ({report['bytes_in']:,} bytes) in, "
            f"{report['documents_out']:,} ({report['bytes_out']:,} bytes) out") in cleaning
    assert f"- exact duplicates removed: {len(report['exact_duplicates'])} documents" in cleaning
    assert "- near deduplication: off" in cleaning


def test_a_runs_card_states_use_and_limitations_and_keeps_evaluations(run, capsys):
    text = (run / "MODEL_CARD.md").read_text(encoding="utf-8")
    use, limits = cards.card_section(text, "Intended use"), cards.card_section(text, "Known limitations")
    assert "Learning and experimentation" in use and "the-verdict" in use
    assert "a model trained on Shakespeare writes Shakespeare" in limits and "No safety tuning" in limits
    assert "Not fit for" in limits
    assert main(["eval", "perplexity", "-m", str(run), "Hello there", "-q"]) == 0
    capsys.readouterr()
    after = (run / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert after.startswith(text.rstrip("\n")) and after.count(HEADING) == 1


def test_quantized_and_imported_copies_carry_the_sources_data_and_compute(run, tmp_path):
    from scratchllm.compress.quantize import quantize_folder
    from scratchllm.interop.importer import import_model
    from scratchllm.model.quant_linear import QuantScheme

    source = (run / "MODEL_CARD.md").read_text(encoding="utf-8")
    sha = bullets(source, "Data provenance")["sha256"]
    tokens = bullets(source, "Training compute")["tokens seen"]
    for kind, out in (("quantized", quantize_folder(run, tmp_path / "q8", QuantScheme(8))),
                      ("imported", import_model(run, tmp_path / "imp"))):
        text = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
        assert "## Source model's data and compute" in text and f"From {run / 'MODEL_CARD.md'}" in text
        assert f"- sha256: {sha}" in text and f"- tokens seen: {tokens}" in text
        done = "converted" if kind == "imported" else "quantized"
        assert f"none here: `scratchllm {kind[:-2] if kind == 'imported' else 'quantize'}` {done}" in \
            cards.card_section(text, "Training compute")
        assert f"That of its source ({run.name})" in cards.card_section(text, "Intended use")
        assert "no safety tuning" in cards.card_section(text, "Known limitations")
    q = (tmp_path / "q8" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert f"- Source: `{run}`" in q and "- Scheme: int8, symmetric" in q and "rounded to fewer bits" in q


def test_a_derived_card_from_a_model_without_a_card_says_so(tmp_path):
    text = derived_lines("pruned", tmp_path / "hf-folder", "hf-folder")
    assert "`scratchllm prune` pruned" in text and "has no scratchllm model card" in text
    assert "removed by magnitude" in text and "scratchllm eval compare" in text
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "README.md").write_text("---\nlicense: mit\ndatasets:\n- openwebtext\n- \"c4\"\ntags: [a]\n---\n# hf\n")
    assert "Its README names these datasets: openwebtext, c4." in derived_lines("imported", hf)
    with pytest.raises(ValueError):
        derived_lines("trained", tmp_path)
    recovery = training_compute(ModelConfig.preset("tiny"), 4096, 90.0, 2)  # a recovery finetune after pruning
    text = derived_lines("pruned", tmp_path, compute=recovery)
    assert "none here" not in text and f"- tokens seen: {4096:,}" in text
    assert f"- cpu core-hours: {90.0 * 2 / 3600:.4g}" in cards.card_section(text, "Training compute")


def test_a_finetuned_card_names_its_method_data_and_source(run, tmp_path, shared_data):
    info = {"name": "ft", "kind": "finetuned", "method": "instruct", "source": {"path": str(run)},
            "data": data_provenance("alpaca-book"), "tokens": 640,
            "compute": training_compute(ModelConfig.preset("tiny"), 640, 36.0, 2, note=cards.FINETUNE_NOTE)}
    text = model_card(info)
    assert "instruct on alpaca-book" in cards.card_section(text, "Intended use")
    assert f"its source model ({run})" in cards.card_section(text, "Known limitations")
    assert "instruction finetuning is not safety tuning" in text and "an upper bound" in text
    assert bullets(text, "Data provenance")["sha256"] == DATASETS["alpaca-book"].sha256
    assert bullets(text, "Training compute")["cpu core-hours"] == f"{36.0 * 2 / 3600:.4g}"
    assert cards.card_section(text, "Training compute").count("tokens seen") == 1 and "- tokens seen: 640" in text
    assert bullets(text, "Source model's data and compute")["sha256"] == DATASETS["the-verdict"].sha256


def test_local_data_is_checksummed_here(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("some text\n", encoding="utf-8")
    got = data_provenance(str(f))
    assert got["sha256"] == hashlib.sha256(b"some text\n").hexdigest() and "not recorded" in got["licence"]
    d = tmp_path / "folder"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_bytes(b"b")
    (d / "sub" / "a.txt").write_bytes(b"a")
    want = hashlib.sha256("".join(f"{name}\t{hashlib.sha256(data).hexdigest()}\n"
                                  for name, data in (("b.txt", b"b"), ("sub/a.txt", b"a"))).encode()).hexdigest()
    assert data_provenance(str(d))["sha256"] == f"{want} (of the 2 files' paths and sha256s)"


def test_compute_and_cleaning_by_hand():
    c = ModelConfig.preset("tiny")
    got = training_compute(c, tokens=10_000, seconds=7200.0, threads=4, seq_len=32)
    assert got["FLOPs"] == train_flops_per_token(c, 32) * 10_000 and got["sequence length"] == 32
    assert got["cpu core-hours"] == 8.0 and got["energy (kWh)"] == pytest.approx(8 * WATTS_PER_CORE / 1000)
    gpu = training_compute(c, tokens=1, seconds=1800.0, threads=8, device="cuda")
    assert gpu["GPU hours"] == 0.5 and gpu["energy (kWh)"] == pytest.approx(0.5 * cards.WATTS_PER_GPU["cuda"] / 1000)
    assert "cpu core-hours" not in gpu
    lines = clean_lines({"documents_in": 3, "documents_out": 2, "bytes_in": 30, "bytes_out": 20, "gutenberg_stripped":
                         ["a"], "gutenberg_bytes": 5, "exact_duplicates": [{"doc": "c", "same_as": "a", "bytes": 10}],
                         "near_duplicates": [], "options": {"dedup": True, "near_dedup": True, "near_threshold": 0.8}})
    assert lines[0] == "- cleaning: 3 documents (30 bytes) in, 2 (20 bytes) out"
    assert "- exact duplicates removed: 1 documents (10 bytes)" in lines
    assert "- near duplicates removed (MinHash, Jaccard >= 0.8): 0 documents (0 bytes)" in lines
    assert clean_lines(None) == [] and clean_lines(["junk"]) == []
    assert torch.get_num_threads() >= 1
