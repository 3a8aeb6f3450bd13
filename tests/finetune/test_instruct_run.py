"""`scratchllm finetune instruct` end to end on the tiny base: checkpoints with generation.json, the report
and the test responses, `generate --instruction` on the result, exact resume, the chat template, and bad
input as one error line with nothing written."""

import json
import warnings
from pathlib import Path

import pytest
from safetensors.torch import load_file

from scratchllm.cli import main
from scratchllm.config.finetune import InstructConfig
from scratchllm.config.sample import SampleConfig
from scratchllm.data.sources import load_records
from scratchllm.finetune.instruct import prompt_and_reference, read_entries, respond, split_entries, write_report
from scratchllm.generate.templates import instruction_prompt, render_chat
from scratchllm.generate.text import generate_text
from scratchllm.interop.load import load_any

STEPS = ["--train.epochs", "none", "--max_steps", "10", "--max_new_tokens", "5", "--quiet"]
# conversations of one exchange (62 tokens) and of two (100 tokens)
CHAT = [
    {"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": f"What is {i}+{i}?"},
                  {"role": "assistant", "content": str(2 * i)},
                  *([{"role": "user", "content": "And doubled?"}, {"role": "assistant", "content": str(4 * i)}]
                    if i % 2 else [])]}
    for i in range(40)
]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, shared_data) -> Path:
    """The book's first 60 entries as a JSON file (51 train, 3 validation, 6 test)."""
    path = tmp_path_factory.mktemp("data") / "instructions.json"
    path.write_text(json.dumps(load_records("alpaca-book", data_dir=shared_data)[:60]), encoding="utf-8")
    return path


def finetune(argv: list[str]) -> int:
    return main(["finetune", "instruct", *argv])


@pytest.fixture(scope="module")
def instruct_run(tmp_path_factory, base_model, data_file) -> Path:
    import torch

    runs = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()  # one thread, as the tests here run (tests/conftest.py)
    torch.set_num_threads(1)
    try:
        argv = ["--init-from", str(base_model), "--data", str(data_file), "--runs-dir", str(runs), *STEPS]
        assert finetune(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return runs / "instruct-instructions"


def last_checkpoint(run: Path) -> Path:
    return run / "checkpoints" / "step-0000010"


def test_a_run_writes_generation_json_report_and_responses(instruct_run, data_file):
    ckpt = last_checkpoint(instruct_run)
    assert json.loads((ckpt / "generation.json").read_text()) == {"eos_token_id": 50256, "prompt_template": "alpaca"}
    state = json.loads((ckpt / "state.json").read_text())
    assert state["task"]["template"] == "alpaca" and "generation.json" in state["files"]

    entries, _ = read_entries(str(data_file), "alpaca")
    _, _, test = split_entries(entries, (0.85, 0.05, 0.10), seed=123)  # train.seed's default
    responses = json.loads((instruct_run / "test-responses.json").read_text())
    assert [{k: v for k, v in r.items() if k != "model_response"} for r in responses] == test and len(test) == 6
    # each response is the finetuned model's greedy answer to the Alpaca prompt
    model, tok, _ = load_any(instruct_run)
    prompt, _ = prompt_and_reference(test[0], "alpaca")
    assert responses[0]["model_response"] == generate_text(model, tok, prompt,
                                                           SampleConfig(max_new_tokens=5, temperature=0)).strip()
    base = json.loads((instruct_run / "base-responses.json").read_text())
    assert [r["instruction"] for r in base] == [e["instruction"] for e in test]

    report = json.loads((instruct_run / "report.json").read_text())
    for model_name in ("test", "base"):
        assert set(report[model_name]) == {"rougeL", "exact_match", "n"} and report[model_name]["n"] == 6
        assert 0.0 <= report[model_name]["rougeL"] <= 1.0
    assert report["truncated"] == 0 and len(report["examples"]) == 3
    assert report["examples"][0]["response"] == responses[0]["model_response"]
    assert "rougeL" in (instruct_run / "MODEL_CARD.md").read_text()
    losses = [json.loads(line) for line in (instruct_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in losses if "val_loss" in m] == [0, 10]


def test_generate_instruction_prints_only_the_response(instruct_run, capsys):
    argv = ["generate", "-m", str(instruct_run), "--instruction", "Name a colour.", "--input", "warm",
            "--temperature", "0", "--max-new-tokens", "6"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    model, tok, _ = load_any(instruct_run)
    prompt = instruction_prompt("alpaca", "Name a colour.", "warm")
    assert out == generate_text(model, tok, prompt, SampleConfig(max_new_tokens=6, temperature=0)) + "\n"
    assert main(["generate", "-m", str(instruct_run), "--instruction", "x", "a prompt"]) == 2
    assert "--instruction is the prompt" in capsys.readouterr().err
    assert main(["generate", "-m", str(instruct_run), "--input", "warm"]) == 2
    assert "--input goes with --instruction" in capsys.readouterr().err


def test_resume_continues_exactly(base_model, data_file, tmp_path):
    common = ["--init-from", str(base_model), "--data", str(data_file), "--runs-dir", str(tmp_path),
              "--train.epochs", "none", "--max_new_tokens", "0", "--quiet"]
    assert finetune([*common, "--name", "straight", "--max_steps", "10"]) == 0
    assert finetune([*common, "--name", "r", "--max_steps", "5"]) == 0
    assert finetune([*common, "--name", "r", "--max_steps", "10", "--resume"]) == 0
    resumed = load_file(str(last_checkpoint(tmp_path / "r") / "model.safetensors"))
    straight = load_file(str(last_checkpoint(tmp_path / "straight") / "model.safetensors"))
    assert resumed.keys() == straight.keys()
    assert all((resumed[k] == straight[k]).all() for k in straight)


def test_chat_template_run_and_generate(base_model, tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in CHAT), encoding="utf-8")
    runs = tmp_path / "runs"
    assert finetune(["--init-from", str(base_model), "--data", str(data), "--runs-dir", str(runs),
                     "--template", "chat", "--mask_prompt", "true", "--max_length", "80", "--train.epochs", "none",
                     "--max_steps", "4", "--max_new_tokens", "4", "--train.batch_size", "4", "--quiet"]) == 0
    run = runs / "instruct-chat"
    train, val, _ = split_entries(CHAT, (0.85, 0.05, 0.10), seed=123)
    _, tok, _ = load_any(run)
    longer = sum(len(tok.encode(render_chat(c["messages"])[0])) > 80 for c in train + val)
    assert 0 < longer < len(train + val)  # the data has both
    assert json.loads((run / "report.json").read_text())["truncated"] == longer
    generation = json.loads((run / "checkpoints" / "step-0000004" / "generation.json").read_text())
    assert generation["prompt_template"] == "chat"
    responses = json.loads((run / "test-responses.json").read_text())
    assert len(responses) == 4 and all("messages" in r and isinstance(r["model_response"], str) for r in responses)
    capsys.readouterr()
    assert main(["generate", "-m", str(run), "--instruction", "What is 3+3?", "--temperature", "0",
                 "--max-new-tokens", "8"]) == 0
    model, tok, _ = load_any(run)
    want = generate_text(model, tok, instruction_prompt("chat", "What is 3+3?"),
                         SampleConfig(max_new_tokens=8, temperature=0, stop=("<|im_end|>",)))
    assert capsys.readouterr().out == want + "\n"


def test_report_without_rouge_score_warns_once_and_gives_exact_match(base_model, data_file, tmp_path, monkeypatch):
    from scratchllm.evaluate import text as metrics

    monkeypatch.setattr(metrics, "rouge_available", lambda: False)
    model, tok, _ = load_any(base_model)
    entries, _ = read_entries(str(data_file), "alpaca")
    config = InstructConfig(init_from=str(base_model), max_new_tokens=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = write_report(model, tmp_path, config, tok, entries[:3], 50256, truncated=0)
    assert [str(w.message) for w in caught] == [metrics.ROUGE_MISSING]
    assert "pip install rouge-score" in metrics.ROUGE_MISSING
    assert report["test"] == {"exact_match": 0.0, "n": 3} and report["base"] == report["test"]
    # the base model is the model here: both answer the same
    assert json.loads((tmp_path / "test-responses.json").read_text()) == \
        json.loads((tmp_path / "base-responses.json").read_text())


def test_lora_trains_only_the_adapters_and_the_report_uses_them(base_model, data_file, tmp_path):
    import torch

    from scratchllm.checkpoint import load_model
    from scratchllm.model.lora import has_lora

    assert finetune(["--init-from", str(base_model), "--data", str(data_file), "--runs-dir", str(tmp_path),
                     "--name", "lora", "--lora", "r=4,alpha=8", "--train.lr", "1e-2", "--train.epochs", "none",
                     "--max_steps", "4", "--max_new_tokens", "3", "--quiet"]) == 0
    source, tok, _ = load_any(base_model)
    tuned, _, meta = load_model(tmp_path / "lora", merge=False)
    assert meta["lora"]["r"] == 4 and has_lora(tuned)
    sources = dict(source.named_parameters())
    assert all(torch.equal(p, sources[n]) for n, p in tuned.named_parameters() if "lora_" not in n)
    assert json.loads((tmp_path / "lora" / "checkpoints" / "step-0000004" / "generation.json").read_text()) \
        == {"eos_token_id": 50256, "prompt_template": "alpaca"}
    # the responses written after training are the adapted model's (as loaded again, merged)
    responses = json.loads((tmp_path / "lora" / "test-responses.json").read_text())
    merged, _, _ = load_any(tmp_path / "lora")
    prompts = [prompt_and_reference(r, "alpaca")[0] for r in responses]
    assert [r["model_response"] for r in responses] == respond(merged, tok, prompts, 3, "alpaca", 50256)


# --- bad input: exit 2, one error line, nothing written -------------------------------------------------------
def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("content,suffix,extra,message", [
    ("", ".json", [], "is empty"),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": }\n', ".jsonl", [],
     "line 2 is not valid JSON"),
    ('[{"instruction": "a", "output": "b"}, {"instruction": "c"}]', ".json", [], "entry 1 has no 'output'"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', ".jsonl", ["--template", "chat"], "no assistant turn"),
    ('{"messages": [{"role": "robot", "content": "hi"}]}\n', ".jsonl", ["--template", "chat"], "unknown role"),
    ('[{"instruction": "a", "output": "b"}]', ".json", ["--max_length", "4096"], "longer than the model's context"),
    ("".join(json.dumps(c) + "\n" for c in CHAT), ".jsonl", ["--template", "chat", "--mask_prompt", "true",
                                                             "--max_length", "50"],
     "no training example has a response within max_length 50"),
])
def test_bad_input_is_one_error_line_and_nothing_written(base_model, tmp_path, capsys, content, suffix, extra,
                                                         message):
    data = tmp_path / f"data{suffix}"
    data.write_text(content, encoding="utf-8")
    runs = tmp_path / "runs"
    runs.mkdir()
    before = tree(tmp_path)
    rc = finetune(["--init-from", str(base_model), "--data", str(data), "--runs-dir", str(runs), *extra, *STEPS])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2 and len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err and tree(tmp_path) == before


def test_real_alpaca_data_lowers_the_validation_loss(base_model, tmp_path):
    """A few dozen steps on the book's 1,100 entries (its split, prompt masked): validation loss falls."""
    assert finetune(["--init-from", str(base_model), "--data", "alpaca-book", "--runs-dir", str(tmp_path),
                     "--shuffle", "false", "--mask_prompt", "true", "--train.lr", "1e-3", "--train.epochs", "none",
                     "--max_steps", "40", "--train.eval_interval", "20", "--max_new_tokens", "0", "--quiet"]) == 0
    run = tmp_path / "instruct-alpaca-book"
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [m["val_loss"] for m in evals if "val_loss" in m]
    assert len(val) == 3 and val[-1] < val[0] - 1.0, val
    assert json.loads((run / "report.json").read_text()) == {"test": {"n": 110}, "truncated": 0}  # all fit in 128
