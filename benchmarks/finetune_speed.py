"""Classification finetuning speed: scratchllm against the book's `train_classifier_simple`, LoRA against full.

The same model shape, the same data and the same number of examples for every row, each row in its
own process (so each gets a clean allocator and its own peak RSS):
- shape: a GPT-2-style model of 6 layers, 6 heads, 384 dims, context 128 (the longest message of the
  balanced SMS training split is 120 GPT-2 tokens, so nothing is truncated), GPT-2's 50,257-token
  vocabulary and tokenizer, biases as GPT-2, dropout 0, a new 2-class head; random weights (speed
  does not depend on them);
- data: SMS spam (`sms-spam`), balanced and split 70/10/20 with seed 123 by scratchllm's classify
  module; the book's rows read the same training and validation rows, written to its CSV format;
- training: one epoch of the training split (drop_last, batch 8: 130 steps of 8), AdamW lr 5e-5,
  weight decay 0.1 (the book's chapter 6 settings), with the book's default of what trains (the
  last block, the final norm and the head) and with full finetuning.

The book (`llms_from_scratch.ch06`): its `GPTModel` (`llms_from_scratch.ch04`) with `out_head`
replaced by a 2-class `nn.Linear`, its `SpamDataset` (every message padded to the longest of the
training split) and `DataLoader(batch_size=8, shuffle=True, drop_last=True)`, its
`train_classifier_simple`, in fp32 (its only precision). Its evaluation is made as small as its
arguments allow (`eval_freq` beyond the last step, `eval_iter=1`: one loss evaluation of one
training and one validation batch at step 0, one accuracy of one of each at the epoch's end), and
scratchllm's rows run the same evaluation (one training and one validation batch at step 0 and at
the end), so both sides do the same work.

scratchllm: `finetune.classify.plan` (its batches: grouped by length, each padded to its own
longest; its loss: the last real token's logits), `finetune.job.set_trainable` and the one
training loop (`train.loop.train`), in the precision "auto" picks (bf16 where the CPU has native
bf16 matmuls, as the machine line says; fp32 otherwise) and in fp32.

Examples/s = training examples / wall time of the training call (tokenising the data and building
the model are outside it). LoRA against full finetuning: seconds per epoch and peak RSS of
scratchllm's rows with `--lora r=8,alpha=16` (attention and MLP) and with every weight training, in
both precisions (bf16's peak RSS also holds per-shape matmul kernels, see the note it prints).

    python benchmarks/finetune_speed.py              # every row, one epoch each (a few minutes on 2 cores)
    python benchmarks/finetune_speed.py --quick      # 20 steps per row
    python benchmarks/finetune_speed.py --no-record  # do not replace its section of benchmarks/RESULTS.md

Target (issue 13): scratchllm >= 2x the book's examples/s. Compare only within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_record_flag, header, recorded, shared_data_dir, sms_spam_split  # noqa: E402

SHAPE = dict(n_layer=6, n_head=6, n_embd=384, context_length=128, vocab_size=50257)
BATCH = 8
LR, WEIGHT_DECAY, SEED = 5e-5, 0.1, 123  # the book's chapter 6 settings
LORA = "r=8,alpha=16"

# label -> (who, trainable, precision, lora): the rows, in the order they run.
ROWS = {
    "book train_classifier_simple, last block": ("book", "last-blocks", "fp32", ""),
    "scratchllm, last block": ("ours", "last-blocks", "auto", ""),
    "scratchllm fp32, last block": ("ours", "last-blocks", "fp32", ""),
    "book train_classifier_simple, all weights": ("book", "all", "fp32", ""),
    "scratchllm, all weights": ("ours", "all", "auto", ""),
    "scratchllm fp32, all weights": ("ours", "all", "fp32", ""),
    f"scratchllm, LoRA {LORA}": ("ours", "all", "auto", LORA),
    f"scratchllm fp32, LoRA {LORA}": ("ours", "all", "fp32", LORA),
}


# --- data: the classify module's split, for both sides ---------------------------------------------
def write_split(folder: Path) -> dict[str, int]:
    """The classify module's balanced 70/10/20 split of sms-spam (seed 123) as the book's CSV files
    (Label 0/1, Text) in `folder`; returns the sizes."""
    import csv

    splits = sms_spam_split(SEED)
    labels = sorted({r["label"] for r in splits["train"]})  # ham, spam: the book's 0 and 1
    sizes = {}
    for name, rows in splits.items():
        with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["Label", "Text"])
            w.writerows([labels.index(r["label"]), r["text"]] for r in rows)
        sizes[name] = len(rows)
    return sizes


def gpt2_tokenizer():
    from scratchllm.tokenizer.bpe import BPETokenizer

    gpt2 = shared_data_dir() / "gpt2"
    return BPETokenizer.from_gpt2_files(gpt2 / "encoder.json", gpt2 / "vocab.bpe")


# --- the rows (each in a child process) -----------------------------------------------------------
def book_row(folder: Path, trainable: str, steps: int | None) -> dict:
    """The book's chapter 6 code on the CSV files in `folder`."""
    import time

    import torch
    from llms_from_scratch.ch04 import GPTModel
    from llms_from_scratch.ch06 import SpamDataset, train_classifier_simple
    from torch.utils.data import DataLoader

    tok = gpt2_tokenizer()
    train_ds = SpamDataset(folder / "train.csv", tok, max_length=None)
    val_ds = SpamDataset(folder / "validation.csv", tok, max_length=train_ds.max_length)
    if steps is not None:  # --quick: the first `steps` batches' worth of examples
        train_ds.data = train_ds.data[:steps * BATCH]
    torch.manual_seed(SEED)
    train_loader = DataLoader(train_ds, batch_size=BATCH, shuffle=True, num_workers=0, drop_last=True)
    val_loader = DataLoader(val_ds, batch_size=BATCH, num_workers=0, drop_last=False)
    cfg = {"vocab_size": SHAPE["vocab_size"], "context_length": SHAPE["context_length"], "emb_dim": SHAPE["n_embd"],
           "n_heads": SHAPE["n_head"], "n_layers": SHAPE["n_layer"], "drop_rate": 0.0, "qkv_bias": True}
    model = GPTModel(cfg)
    model.out_head = torch.nn.Linear(cfg["emb_dim"], 2)
    if trainable == "last-blocks":  # the book's section 6.5
        for p in model.parameters():
            p.requires_grad = False
        model.out_head.requires_grad_(True)
        model.trf_blocks[-1].requires_grad_(True)
        model.final_norm.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    n = len(train_loader)
    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            t0 = time.perf_counter()
            *_, examples = train_classifier_simple(model, train_loader, val_loader, optimizer, "cpu", num_epochs=1,
                                                   eval_freq=n + 1, eval_iter=1)
            seconds = time.perf_counter() - t0
        finally:
            sys.stdout = stdout
    return {"examples": examples, "steps": n, "seconds": seconds, "precision": "fp32",
            "trained": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "padded_tokens": n * BATCH * train_ds.max_length}


def ours_row(trainable: str, precision: str, lora: str, steps: int | None) -> dict:
    """scratchllm's classify plan, what trains, and the one loop."""
    import time

    import torch

    from scratchllm.config.finetune import ClassifyConfig, book_train
    from scratchllm.config.lora import LoraConfig
    from scratchllm.config.model import ModelConfig
    from scratchllm.finetune.classify import plan as classify_plan
    from scratchllm.finetune.job import count_trainable, set_trainable
    from scratchllm.model import GPT
    from scratchllm.runtime import seed_everything, setup_process
    from scratchllm.train.loop import resolve_precision, train

    lora_cfg = LoraConfig.from_spec(lora) if lora else LoraConfig()
    # eval_batches=1: the plan's evaluation (loss and accuracy from one forward pass) reads one training and
    # one validation batch, at step 0 and at the end, as the book's rows do (module doc)
    config = ClassifyConfig(init_from="(random weights)", data="sms-spam", trainable=trainable, lora=lora_cfg,
                            train=book_train(precision=precision, progress=False, eval_batches=1))
    tc = config.train
    setup_process(tc.threads, keep_freed=tc.keep_freed_memory)  # as the finetune job does
    seed_everything(tc.seed)
    model = GPT(ModelConfig(**SHAPE, dropout=0.0, tie_weights=False))
    p = classify_plan(config, model, gpt2_tokenizer(), {})
    set_trainable(p.model, config, p.new_modules)
    n = p.batches.batches_per_epoch if steps is None else steps
    tc = tc.replace(max_steps=n, epochs=None, eval_interval=n + 1)
    t0 = time.perf_counter()
    state = train(p.model, p.batches, p.loss_fn, tc, eval_fn=p.eval_fn)
    seconds = time.perf_counter() - t0
    return {"examples": state.step * BATCH, "steps": state.step, "seconds": seconds,
            "precision": resolve_precision(precision, torch.device("cpu")), "trained": count_trainable(p.model)[0],
            "padded_tokens": state.tokens}


def child(args: list[str]) -> None:
    """Run one row in this (fresh) process; print its figures and peak RSS as JSON."""
    import resource

    folder, label, steps = Path(args[0]), args[1], (None if args[2] == "epoch" else int(args[2]))
    who, trainable, precision, lora = ROWS[label]
    out = book_row(folder, trainable, steps) if who == "book" else ours_row(trainable, precision, lora, steps)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 steps per row instead of one epoch")
    ap.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    add_record_flag(ap)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child)
        return
    with recorded("finetune_speed", not args.no_record):
        run_all(args)


def run_all(args) -> None:
    header("classification finetuning speed: scratchllm vs the book's train_classifier_simple (chapter 6)")
    env = {**os.environ, "SCRATCHLLM_DATA_DIR": str(shared_data_dir())}
    with tempfile.TemporaryDirectory(prefix="finetune-speed-") as tmp:
        os.environ["SCRATCHLLM_DATA_DIR"] = env["SCRATCHLLM_DATA_DIR"]
        sizes = write_split(Path(tmp))
        steps = "20" if args.quick else "epoch"
        print(f"shape: {SHAPE['n_layer']} layers, {SHAPE['n_head']} heads, {SHAPE['n_embd']} dims, context "
              f"{SHAPE['context_length']}, GPT-2's vocabulary ({SHAPE['vocab_size']:,}), random weights, 2 classes")
        print(f"data: sms-spam balanced, split 70/10/20 with seed {SEED} by finetune.classify: "
              f"{sizes['train']} train / {sizes['validation']} validation / {sizes['test']} test messages; "
              f"{'20 steps' if args.quick else 'one epoch'} of batch {BATCH} per row, AdamW lr {LR}, "
              f"each row in its own process")
        print(f"{'row':44s} {'precision':>9s} {'steps':>5s} {'tokens':>7s} {'trained':>11s} {'seconds':>8s} "
              f"{'examples/s':>10s} {'peak RSS':>9s}")
        results = {}
        for label in ROWS:
            r = subprocess.run([sys.executable, __file__, "--child", tmp, label, steps], capture_output=True,
                               text=True, env=env)
            if r.returncode != 0:
                print(f"{label:44s} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
                continue
            d = json.loads(r.stdout.strip().splitlines()[-1])
            d["eps"] = d["examples"] / d["seconds"]
            results[label] = d
            print(f"{label:44s} {d['precision']:>9s} {d['steps']:5d} {d['padded_tokens']:7,d} {d['trained']:11,d} "
                  f"{d['seconds']:8.1f} {d['eps']:10.1f} {d['peak_rss_mib']:5,.0f} MiB", flush=True)
    print("(tokens: the padded tokens the training steps read; the book pads every message to the longest)")
    report(results, sizes["train"] // BATCH)


def report(results: dict, epoch_steps: int) -> None:
    def ratio(a: str, b: str) -> str:
        return f"{results[a]['eps'] / results[b]['eps']:.2f}x" if a in results and b in results else "n/a"

    print("ratios (examples/s of scratchllm / the book's), target >= 2x:")
    for what in ("last block", "all weights"):
        book = f"book train_classifier_simple, {what}"
        for ours in (f"scratchllm, {what}", f"scratchllm fp32, {what}"):
            if ours in results and book in results:
                r = results[ours]["eps"] / results[book]["eps"]
                print(f"  {ours:32s} ({results[ours]['precision']}): {r:.2f}x  "
                      f"{'target met' if r >= 2 else 'target NOT met'}")
    for prec in ("", " fp32"):
        full, lora = f"scratchllm{prec}, all weights", f"scratchllm{prec}, LoRA {LORA}"
        if full in results and lora in results:
            f, q = results[full], results[lora]
            per_epoch = [d["seconds"] / d["steps"] * epoch_steps for d in (q, f)]
            print(f"LoRA {LORA} (attention and MLP) against full finetuning, scratchllm, {f['precision']}: seconds "
                  f"per epoch {per_epoch[0]:.1f} vs {per_epoch[1]:.1f} "
                  f"({ratio(lora, full)} the examples/s); peak RSS {q['peak_rss_mib']:,.0f} vs "
                  f"{f['peak_rss_mib']:,.0f} MiB; trained parameters {q['trained']:,} vs {f['trained']:,}")
    print("(peak RSS in bf16 grows with each new padded batch length: CPU bf16 matmuls keep per-shape oneDNN kernels "
          "and buffers; the fp32 rows show the memory of the training itself)")


if __name__ == "__main__":
    main()
