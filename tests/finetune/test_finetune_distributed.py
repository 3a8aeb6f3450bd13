"""`scratchllm finetune` with 2 processes on the CPU (gloo), launched the real way (torchrun, and
`--nproc 2`), against one process on the same global batches: the same loss at every step (fp32,
within 1e-5) and the same final weights, for instruct with LoRA under DDP, classify under DDP and
FSDP (also from a Hugging Face GPT-2 folder, whose Conv1D matrices the model reads in place), and DPO
under DDP. Only rank 0 writes the run folder (one folder, each metric once, one model
card) and prints; LoRA with FSDP is one clear error."""

import csv
import json
from pathlib import Path

import pytest
import torch
from finetune_helpers import save_base
from safetensors.torch import load_file

from launch_helpers import ok, scratchllm, torchrun
from scratchllm.cli import main
from scratchllm.data.readers import read_sms_records
from scratchllm.data.sources import load_records

STEPS = 6
SETTINGS = ["--train.epochs", "none", "--train.max_steps", str(STEPS), "--train.batch_size", "4",
            "--train.log_interval", "1", "--train.eval_interval", "3", "--train.precision", "fp32",
            "--train.threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def work(tmp_path_factory, shared_data) -> Path:
    """A tiny base model (untied head: the base model's LoRA adapters cover it too) and the data of the
    three methods, small."""
    d = tmp_path_factory.mktemp("dist")
    save_base(d / "base", shared_data)
    (d / "instructions.json").write_text(json.dumps(load_records("alpaca-book", data_dir=shared_data)[:40]))
    prefs = json.loads((shared_data / "instruction-data-with-preference.json").read_text())[:40]
    (d / "prefs.json").write_text(json.dumps(prefs))
    records = read_sms_records(shared_data / "SMSSpamCollection")
    rows = [(r["text"], r["label"]) for r in records if r["label"] == "ham"][:40] + \
        [(r["text"], r["label"]) for r in records if r["label"] == "spam"][:40]
    with open(d / "sms.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    return d


def argv(work: Path, method: str, data: str, runs: Path, *extra: str, base: str = "base") -> list[str]:
    return ["finetune", method, "--init-from", str(work / base), "--data", str(work / data), "--runs-dir",
            str(runs), "--name", "job", *SETTINGS, *extra]


def one_process(args: list[str]) -> None:
    """The reference: the same command in this process, without a strategy."""
    assert main([*args, "--train.strategy", "none"]) == 0


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)), "a step logged twice: more than one process wrote the metrics"
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    last = run / "checkpoints" / f"step-{STEPS:07d}"
    out = {}
    for name in ("model.safetensors", "adapters.safetensors"):
        if (last / name).exists():
            out.update({f"{name}:{k}": v for k, v in load_file(str(last / name)).items()})
    return out


def assert_same_job(runs2: Path, runs1: Path) -> None:
    """The 2-process run equals the 1-process run, and it was written by rank 0 alone."""
    a, b = losses(runs2 / "job"), losses(runs1 / "job")
    assert sorted(a) == list(range(1, STEPS + 1)) == sorted(b)
    for step in a:
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
    assert max(abs(a[s] - a[1]) for s in a) > 1e-3  # training moved: not a comparison of untouched models
    wa, wb = final_weights(runs2 / "job"), final_weights(runs1 / "job")
    assert set(wa) == set(wb) and wa
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-5, rtol=0, msg=lambda m, name=name: f"{name}: {m}")
    # one run folder (no job-2 claimed by another rank), with rank 0's report and card
    assert sorted(p.name for p in runs2.iterdir()) == ["job", "latest"]
    for name in ("MODEL_CARD.md", "loss.png", "report.json", "run_config.json"):
        assert (runs2 / "job" / name).is_file(), name


def said_once(proc, method: str) -> None:
    assert proc.stdout.count(f"finetune {method}: ") == 1, proc.stdout[-2000:]
    assert "2 processes (" in proc.stdout and "Traceback" not in proc.stderr


def two_equal_one(work: Path, tmp_path: Path, method: str, data: str, extra: tuple, launch: tuple,
                  base: str = "base") -> None:
    """`method` on 2 processes (`launch`: torchrun with a strategy, or scratchllm with --nproc) equals one process
    on the same batches, and rank 0 alone wrote and printed."""
    one_process(argv(work, method, data, tmp_path / "one", *extra, base=base))
    runner, *flags = launch
    args = argv(work, method, data, tmp_path / "two", *extra, base=base)
    proc = torchrun("-m", "scratchllm", *args, *flags) if runner == "torchrun" else scratchllm(*args, *flags)
    ok(proc)
    said_once(proc, method)
    assert_same_job(tmp_path / "two", tmp_path / "one")


@pytest.mark.slow
def test_instruct_with_lora_under_ddp_equals_one_process(work, tmp_path):
    extra = ("--lora", "r=4,alpha=8", "--train.lr", "1e-2", "--max_new_tokens", "2")
    two_equal_one(work, tmp_path, "instruct", "instructions.json", extra, ("torchrun", "--train.strategy", "ddp"))
    assert any(k.startswith("adapters.safetensors:") for k in final_weights(tmp_path / "two" / "job"))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_classify_with_nproc_equals_one_process(work, tmp_path, strategy):
    two_equal_one(work, tmp_path, "classify", "sms.csv", ("--train.lr", "1e-3"),
                  ("scratchllm", "--train.strategy", strategy, "--nproc", "2"))
    # the report (test metrics after training) is the one process's: under FSDP from the consolidated weights
    a, b = (json.loads((tmp_path / d / "job" / "report.json").read_text()) for d in ("two", "one"))
    assert a["test"]["confusion"] == b["test"]["confusion"]


@pytest.mark.slow
def test_dpo_under_ddp_equals_one_process(work, tmp_path):
    # (AdamW divides each update by the root of its second moment: an element whose gradient is nearly 0
    # turns last-bit differences of the reduction into updates ~lr x 1e-2; this lr keeps them below 1e-5)
    two_equal_one(work, tmp_path, "dpo", "prefs.json", ("--train.lr", "3e-4"), ("torchrun", "--train.strategy", "ddp"))
    # the report (the test pairs after training) is the one process's: the same pairs, the same preferences
    a, b = (json.loads((tmp_path / d / "job" / "report.json").read_text()) for d in ("two", "one"))
    assert a["test"]["pairs"] == b["test"]["pairs"] > 0
    assert a["test"]["preference_accuracy"] == pytest.approx(b["test"]["preference_accuracy"], abs=1e-6)


def test_lora_with_fsdp_is_one_clear_error(work, tmp_path):
    proc = scratchllm(*argv(work, "instruct", "instructions.json", tmp_path / "runs", "--lora", "r=4"),
                      "--train.strategy", "fsdp", "--nproc", "2")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "use --train.strategy ddp" in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_classify_from_a_hugging_face_gpt2_folder_under_fsdp_equals_one_process(work, tmp_path):
    """A GPT-2 read from a HF folder holds its Conv1D matrices as transposed views of the file (interop.hf):
    FSDP, which shards contiguous parameters only, gets them copied into nn.Linear's layout first."""
    hf = work / "hf-base"
    if not hf.exists():
        assert main(["export", "hf", str(work / "base"), "--out", str(hf)]) == 0
    from scratchllm.interop.load import load_any

    assert not load_any(str(hf))[0].blocks[0].attn.qkv.weight.is_contiguous()  # read in place
    two_equal_one(work, tmp_path, "classify", "sms.csv", ("--train.lr", "1e-3"),
                  ("scratchllm", "--train.strategy", "fsdp", "--nproc", "2"), base="hf-base")
