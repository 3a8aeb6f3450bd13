"""`scratchllm finetune classify` and `scratchllm classify` end to end, on a tiny base model: the run
folder (checkpoints, report.json, PNGs, model card), exact resume, classifying texts alone and in
batches, the active-learning round trip, and bad input (one `error:` line, exit 2, nothing written)."""

import csv
import json
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from finetune_helpers import TINY, gpt2_tokenizer, save_base
from safetensors.torch import load_file

from scratchllm.checkpoint import save_checkpoint
from scratchllm.cli import main
from scratchllm.config.model import ModelConfig
from scratchllm.data.readers import read_sms_records
from scratchllm.evaluate.classification import uncertainty
from scratchllm.model import GPT


def write_csv(path: Path, rows, header=("text", "label")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def sms_rows(shared_data: Path, ham: int = 60, spam: int = 40) -> list[tuple[str, str]]:
    records = read_sms_records(shared_data / "SMSSpamCollection")
    hams = [(r["text"], "ham") for r in records if r["label"] == "ham"][:ham]
    spams = [(r["text"], "spam") for r in records if r["label"] == "spam"][:spam]
    return hams + spams


def finetune_argv(base, data, runs, name, *extra):
    return ["finetune", "classify", "--init-from", str(base), "--data", str(data), "--runs-dir", str(runs),
            "--name", name, "--train.epochs", "none", "--eval_interval", "3", "--quiet", "--threads", "1", *extra]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code
        except BaseException:
            pytest.fail(f"{argv} raised:\n{traceback.format_exc()}")
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


@pytest.fixture(scope="module")
def work(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("classify")
    data = write_csv(root / "sms.csv", sms_rows(shared_data))
    return root, data


@pytest.fixture(scope="module")
def trained(work, base_model):
    """A classifier finetuned for 8 steps (max_length 24: the longer texts are cut, and counted)."""
    root, data = work
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(finetune_argv(base_model, data, root / "runs", "spam", "--max_steps", "8",
                                  "--max_length", "24")) == 0
    return root / "runs" / "spam"


def test_finetune_writes_the_run_and_its_report(trained):
    files = {p.name for p in trained.iterdir()}
    assert {"checkpoints", "report.json", "confusion.png", "curves.png", "loss.png", "MODEL_CARD.md",
            "metrics.jsonl"} <= files
    report = json.loads((trained / "report.json").read_text())
    assert report["labels"] == ["ham", "spam"]
    assert report["examples"] == {"train": 56, "val": 8, "test": 16}  # 80 balanced texts, 70/10/20
    assert report["truncated"] > 0
    for split, n in report["examples"].items():
        m = report[split]
        assert set(m) >= {"accuracy", "precision", "recall", "f1", "per_class", "confusion"}
        assert np.asarray(m["confusion"]).sum() == n
        assert sum(c["support"] for c in m["per_class"].values()) == n
        assert set(m["per_class"]["spam"]) == {"precision", "recall", "f1", "support"}
    assert (trained / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    state = json.loads((trained / "checkpoints" / "step-0000008" / "state.json").read_text())
    assert state["task"] == {"kind": "classify", "labels": ["ham", "spam"], "pooling": "last", "max_length": 24,
                             "text_column": "text", "label_column": "label"}
    config = json.loads((trained / "checkpoints" / "step-0000008" / "config.json").read_text())
    assert config["n_classes"] == 2 and config["tie_weights"] is False
    evals = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if "val_accuracy" in r] == [0, 3, 6, 8]
    card = (trained / "MODEL_CARD.md").read_text()
    assert "classify" in card and "per_class" in card


def test_resume_continues_exactly(work, base_model, trained, capsys):
    root, data = work
    runs = root / "runs"
    rc, _, err = run_cli(finetune_argv(base_model, data, runs, "halves", "--max_steps", "4", "--max_length", "24"),
                         capsys)
    assert rc == 0, err
    assert "warning:" in err and "texts are longer than 24 tokens" in err  # truncated, counted, not an error
    rc, out, err = run_cli(finetune_argv(base_model, data, runs, "halves", "--max_steps", "8", "--max_length", "24",
                                         "--resume"), capsys)
    assert rc == 0, err
    assert "step 8" in out
    whole = load_file(str(trained / "checkpoints" / "step-0000008" / "model.safetensors"))
    halves = load_file(str(runs / "halves" / "checkpoints" / "step-0000008" / "model.safetensors"))
    assert whole.keys() == halves.keys()
    for k in whole:
        assert np.array_equal(whole[k].float().numpy(), halves[k].float().numpy()), k


def test_classify_texts_alone_and_in_batches(trained, work, capsys):
    root, _ = work
    rc, out, err = run_cli(["classify", "-m", trained, "WINNER!! Claim your prize now"], capsys)
    assert rc == 0, err
    label, prob = out.split()
    assert label in ("ham", "spam") and 0.5 <= float(prob) <= 1
    texts = [
        "ok see you at 5", "Free entry! text WIN to 80086 now to claim", "hi", "where are you?",
        "URGENT: your mobile number has won a 2000 pound prize, call 09061701461 " * 3]
    (root / "texts.txt").write_text("\n".join(texts) + "\n\n")
    rc, out, err = run_cli(["classify", "-m", trained, "--file", root / "texts.txt", "--jsonl", "--batch-size", "2"],
                           capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == texts
    assert "warning:" in err and "cut to its first 24" in err  # the long text is truncated, and said so
    for r in rows:
        assert sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert r["probability"] == max(r["probabilities"].values())
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
    for r in rows[:4]:  # each text alone gives what it got in a padded batch
        rc, out, _ = run_cli(["classify", "-m", trained, r["text"], "--jsonl"], capsys)
        assert json.loads(out)["probabilities"] == pytest.approx(r["probabilities"], abs=1e-5)
    rc, out, _ = run_cli(["classify", "-m", trained / "checkpoints" / "step-0000008", "hi", "where are you?"], capsys)
    assert [line.split("\t")[2] for line in out.splitlines()] == ["hi", "where are you?"]


def test_uncertain_round_trip(trained, work, base_model, capsys, shared_data):
    root, _ = work
    texts = [t for t, _ in sms_rows(shared_data, 150, 0)[100:150]]  # texts the classifier did not train on
    write_csv(root / "pool.csv", [(t, "") for t in texts])
    out_file = root / "to-label.csv"
    rc, out, err = run_cli(["classify", "-m", trained, "--uncertain", "5", root / "pool.csv", "--by", "entropy",
                            "--out", out_file], capsys)
    assert rc == 0, err
    assert "fill in its 'label' column" in err
    rc, scored, _ = run_cli(["classify", "-m", trained, "--file", root / "pool.csv", "--jsonl"], capsys)
    probs = np.array([[json.loads(line)["probabilities"][k] for k in ("ham", "spam")] for line in scored.splitlines()])
    expected = [texts[i] for i in np.argsort(-uncertainty(probs, "entropy"), kind="stable")[:5]]
    with open(out_file, newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [r["text"] for r in table] == expected
    assert all(r["label"] == "" and r["predicted"] in ("ham", "spam") for r in table)
    # read back before labelling: one clear error naming the file and the first line
    rc, _, err = run_cli(finetune_argv(base_model, out_file, root / "runs", "again", "--max_steps", "1"), capsys)
    assert rc == 2 and f"labels missing: fill in the 'label' column of {out_file} (line 2" in err
    assert not (root / "runs" / "again").exists()
    # margin ranking on stdout, in the same format
    rc, out, _ = run_cli(["classify", "-m", trained, "--uncertain", "3", root / "pool.csv"], capsys)
    rows = list(csv.DictReader(out.splitlines()))
    assert [r["text"] for r in rows] == [texts[i] for i in np.argsort(-uncertainty(probs, "margin"),
                                                                     kind="stable")[:3]]


# --- bad input: one error line, exit 2, nothing written ------------------------------------------------
def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, shared_data):
    d = tmp_path_factory.mktemp("bad")
    write_csv(d / "missing.csv", [("hello", "ham"), ("you won", ""), ("hi", "spam")])
    write_csv(d / "one.csv", [("hello", "ham"), ("hi", "ham")])
    write_csv(d / "cols.csv", [("hello", "ham")], header=("body", "kind"))
    write_csv(d / "good.csv", sms_rows(shared_data, 20, 20))
    (d / "empty.csv").write_text("")
    (d / "latin1.csv").write_bytes("text,label\ncafé crème,ham\n".encode("latin-1"))
    (d / "bad.jsonl").write_text('{"text": "a", "label": "ham"}\n{"text": \n')
    (d / "texts.txt").write_text("hello\n")
    (d / "taken.csv").write_text("x")
    save_base(d / "small-vocab", shared_data, vocab_size=1000)  # GPT-2's tokenizer, a 1,000-token model
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**TINY, "vocab_size": 1000, "n_classes": 2, "tie_weights": False}))
    task = {"kind": "classify", "labels": ["ham", "spam"], "pooling": "last", "max_length": 64}
    save_checkpoint(d / "clf-small-vocab", model, tokenizer=gpt2_tokenizer(shared_data),
                    state={"step": 0, "task": task})
    save_checkpoint(d / "clf-3-labels", model, tokenizer=gpt2_tokenizer(shared_data),
                    state={"step": 0, "task": {**task, "labels": ["a", "b", "c"]}})
    return d


BAD = [
    (["finetune", "classify", "--data", "{d}/missing.csv"], "labels missing: fill in the 'label' column of "
                                                             "{d}/missing.csv (line 3"),
    (["finetune", "classify", "--data", "{d}/one.csv"], "one class only ('ham', 2 texts)"),
    (["finetune", "classify", "--data", "{d}/good.csv", "--labels", "ham,eggs"], "unknown label 'eggs'"),
    (["finetune", "classify", "--data", "{d}/good.csv", "--labels", "ham"], "at least two classes"),
    (["finetune", "classify", "--data", "{d}/cols.csv"], "has no column 'text' (columns: body, kind)"),
    (["finetune", "classify", "--data", "{d}/empty.csv"], "empty.csv is empty"),
    (["finetune", "classify", "--data", "{d}/bad.jsonl"], "bad.jsonl line 2 is not valid JSON"),
    (["finetune", "classify", "--data", "{d}/nothere.csv"], "nothere.csv not found"),
    (["finetune", "classify", "--data", "{d}/latin1.csv"], "latin1.csv is not valid UTF-8 at byte offset 14"),
    (["finetune", "classify", "--data", "{d}/good.csv", "--init-from", "{d}/small-vocab"],
     "beyond the model's vocabulary of 1000"),
    (["classify", "-m", "{base}", "hello"], "is not a classifier"),
    (["classify", "-m", "{d}/small-vocab", "hello"], "is not a classifier"),
    (["classify", "-m", "{d}/clf-small-vocab", "hello"], "token id 31373, beyond the model's vocabulary of 1000"),
    (["classify", "-m", "{d}/clf-3-labels", "hello"], "task.labels must list the 2 label names"),
    (["classify", "-m", "{run}", "--uncertain", "2", "{d}/texts.txt", "--out", "{d}/taken.csv"], "already exists"),
    (["classify", "-m", "{run}", "--uncertain", "2", "{d}/texts.txt", "--out", "{d}/x.txt"], "write a .csv, .tsv"),
    (["classify", "-m", "{run}", "--uncertain", "0", "{d}/texts.txt"], "--uncertain must be >= 1"),
    (["classify", "-m", "{run}", "--file", "{d}/nothere.txt"], "nothere.txt not found"),
    (["classify", "-m", "{run}", "--file", "{d}/empty.csv"], "empty.csv is empty"),
    (["classify", "-m", "{run}", "--file", "{d}/cols.csv"], "has no column 'text' (columns: body, kind)"),
    (["classify", "-m", "{run}", "--file", "{d}/latin1.csv"], "latin1.csv is not valid UTF-8"),
    (["classify", "-m", "{d}/nodir", "hi"], "does not exist"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[f"{a[0]}-{m[:24]}" for a, m in BAD])
def test_bad_input_is_one_error_line(argv, message, bad_inputs, base_model, trained, tmp_path, capsys):
    names = {"d": bad_inputs, "base": base_model, "run": trained}
    argv = [a.format(**names) for a in argv]
    if argv[0] == "finetune":
        argv += ["--runs-dir", str(tmp_path / "runs"), "--max_steps", "2", "--train.epochs", "none"]
        if "--init-from" not in argv:
            argv += ["--init-from", str(base_model)]
    before = _tree(bad_inputs), _tree(trained)
    rc, out, err = run_cli(argv, capsys)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2, (argv, err)
    assert len(errors) == 1, err
    assert message.format(**names) in errors[0]
    assert _tree(tmp_path) == {} and (_tree(bad_inputs), _tree(trained)) == before


def test_classify_reads_stdin_and_defaults_to_the_latest_run(trained, monkeypatch, capsys):
    import io
    import sys

    fake = io.TextIOWrapper(io.BytesIO(b"hello there\n\nFREE prize, txt WIN now\n"), encoding="utf-8")
    fake.isatty = lambda: False
    monkeypatch.setattr(sys, "stdin", fake)
    rc, out, err = run_cli(["classify", "--runs-dir", trained.parent], capsys)  # runs/latest: a classifier
    assert rc == 0, err
    lines = [line.split("\t") for line in out.splitlines()]
    assert [row[2] for row in lines] == ["hello there", "FREE prize, txt WIN now"]
    assert all(row[0] in ("ham", "spam") and 0.5 <= float(row[1]) <= 1 for row in lines)


def test_lora_classifier_trains_adapters_and_the_head_only(work, base_model, capsys):
    root, data = work
    runs = root / "runs-lora"
    rc, out, err = run_cli(finetune_argv(base_model, data, runs, "lora", "--max_steps", "3", "--lora", "r=4,alpha=8"),
                           capsys)
    assert rc == 0, err
    assert "LoRA r=4 on" in out
    ck = runs / "lora" / "checkpoints" / "step-0000003"
    assert (ck / "adapters.safetensors").is_file()
    base = load_file(str(base_model / "model.safetensors"))
    tuned = load_file(str(ck / "model.safetensors"))
    for k, v in base.items():
        if not k.startswith("lm_head"):
            assert torch.equal(tuned[k], v), k  # the base stays frozen: only adapters and the new head train
    torch.manual_seed(123)
    head_at_start = torch.nn.Linear(32, 2)  # the seeded head before training
    assert tuned["lm_head.weight"].shape == (2, 32) and not torch.equal(tuned["lm_head.weight"], head_at_start.weight)
    rc, out, err = run_cli(["classify", "-m", runs / "lora", "free prize, call now", "--jsonl"], capsys)
    assert rc == 0, err
    before = json.loads(out)
    assert before["label"] in ("ham", "spam")
    # merged, the classifier keeps its labels and gives the same probabilities
    rc, _, err = run_cli(["lora", "merge", runs / "lora", "--out", root / "merged"], capsys)
    assert rc == 0, err
    rc, out, err = run_cli(["classify", "-m", root / "merged", "free prize, call now", "--jsonl"], capsys)
    assert rc == 0, err
    after = json.loads(out)
    assert after["label"] == before["label"]
    assert after["probability"] == pytest.approx(before["probability"], abs=1e-5)
    # its adapters alone would lose the head, which trained in full: refused, with what to do instead
    rc, _, err = run_cli(["lora", "extract", runs / "lora", "--out", root / "adapters"], capsys)
    assert rc == 2 and "lora merge" in err and not (root / "adapters").exists()


def test_mean_pooling_and_a_given_label_order_reach_classify(work, base_model, capsys):
    root, data = work
    runs = root / "runs-mean"
    rc, _, err = run_cli(finetune_argv(base_model, data, runs, "mean", "--max_steps", "2", "--pooling", "mean",
                                       "--labels", "spam,ham", "--balance", "false"), capsys)
    assert rc == 0, err
    report = json.loads((runs / "mean" / "report.json").read_text())
    assert report["labels"] == ["spam", "ham"]
    assert report["examples"] == {"train": 70, "val": 10, "test": 20}  # all 100 texts: not balanced
    assert sum(c["support"] for c in report["test"]["per_class"].values()) == 20
    state = json.loads((runs / "mean" / "checkpoints" / "step-0000002" / "state.json").read_text())
    assert state["task"]["pooling"] == "mean" and state["task"]["labels"] == ["spam", "ham"]
    rc, out, err = run_cli(["classify", "-m", runs / "mean", "see you soon", "--jsonl"], capsys)
    assert rc == 0, err
    assert list(json.loads(out)["probabilities"]) == ["spam", "ham"]
