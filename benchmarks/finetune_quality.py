"""Classification finetuning quality: SMS spam, a model scratchllm pretrained here, against baselines.

Every row is measured on the same test split: `sms-spam` balanced by undersampling and split
70/10/20 with seed 123 by scratchllm's classify module (`finetune.classify`; the TF-IDF row reads
the same rows through the same function). The book reports 95.67% test accuracy for OpenAI's GPT-2
124M (chapter 6, last block + final norm + head trained, 5 epochs); it is printed as the
reference line. Rows:

(a) the pretrained model: the main job's recipe (configs/shakespeare-bpe.toml: a 4.3M-parameter Llama-style GPT
    with a 4,096-token BPE, both trained from scratch on the complete works of Shakespeare, bounded
    at 1,200 s of training with the rate decayed over them), pretrained by this script (`scratchllm
    train`) unless `--pretrained RUN` names such a run folder; then `scratchllm finetune classify`
    from it: the book's default (the last block, the final norm and the head at lr 5e-5, 5 epochs),
    every weight at the book's rate,
    and every weight at 1e-4 (the rate chosen on validation accuracy for this small model);
(b) the same architecture and tokenizer from random weights, finetuned the same ways: what
    pretraining is worth;
(c) TF-IDF (word 1- and 2-grams) + logistic regression (scikit-learn), C chosen on validation;
(d) LoRA (`--lora r=8,alpha=16`: attention and MLP, plus the new head, at lr 5e-4) against full
    finetuning at 1e-4: accuracy, seconds, peak RSS, trained parameters.

Each finetuning row runs the real job (`finetune.job.finetune`, as `scratchllm finetune classify`
does) in its own process, so its seconds are the loop's training time and its peak RSS its own;
its test accuracy and macro F1 come from the run's report (`report.json`). What was tried to choose
the rows' settings is in benchmarks/RESULTS.md, below this benchmark's section.

    python benchmarks/finetune_quality.py                      # pretrain (20 minutes), then every row (~5 min)
    python benchmarks/finetune_quality.py --pretrained runs/shakespeare-bpe   # reuse a pretrained run
    python benchmarks/finetune_quality.py --quick              # a 60 s pretraining, one epoch per row
    python benchmarks/finetune_quality.py --no-record          # do not replace its section of RESULTS.md

Target (issue 13): the pretrained model at or above the book's 95.67% test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, add_record_flag, header, recorded, shared_data_dir, sms_spam_split  # noqa: E402

RECIPE = ROOT / "configs" / "shakespeare-bpe.toml"
# The book's chapter 6 test accuracy, OpenAI's GPT-2 124M: 287 of its 300 test messages (its split has
# the same sizes as this one); compared at the 4 digits it is given to, so 287 of 300 reaches it.
BOOK_ACCURACY = 0.9567
SEED = 123  # the book's: the split and the new head

# label -> (start: "pretrained" | "random", settings of `scratchllm finetune classify` beyond its defaults,
# which are the book's: AdamW lr 5e-5, 5 epochs, batch 8, the last block + final norm + head). The
# higher rates were chosen on VALIDATION accuracy among 5e-5, 1e-4, 2e-4 (full) and 5e-5, 5e-4 (LoRA,
# whose usual rate is about 10x full finetuning's); RESULTS.md lists what was tried.
ROWS = {
    "pretrained, last block, lr 5e-5 (book default)": ("pretrained", {"trainable": "last-blocks"}),
    "pretrained, all weights, lr 5e-5": ("pretrained", {"trainable": "all"}),
    "pretrained, all weights, lr 1e-4": ("pretrained", {"trainable": "all", "train": {"lr": 1e-4}}),
    "pretrained, LoRA r=8 alpha=16, lr 5e-4": ("pretrained", {"trainable": "all", "lora": "r=8,alpha=16",
                                                              "train": {"lr": 5e-4}}),
    "random init, last block, lr 5e-5 (book default)": ("random", {"trainable": "last-blocks"}),
    "random init, all weights, lr 5e-5": ("random", {"trainable": "all"}),
    "random init, all weights, lr 1e-4": ("random", {"trainable": "all", "train": {"lr": 1e-4}}),
}
FULL, LORA = "pretrained, all weights, lr 1e-4", "pretrained, LoRA r=8 alpha=16, lr 5e-4"


# --- pretraining ----------------------------------------------------------------------------------
# The pretraining: the main job's recipe given 20 minutes instead of its 8, the learning rate decayed
# over those seconds (the issue allows 30 minutes; the recorded run's model trained so).
PRETRAIN_SECONDS = 1200


def pretrain(runs_dir: Path, quick: bool) -> Path:
    """`scratchllm train --config configs/shakespeare-bpe.toml` for PRETRAIN_SECONDS into runs_dir; returns
    the run folder."""
    seconds = 60 if quick else PRETRAIN_SECONDS
    cmd = [sys.executable, "-m", "scratchllm.cli", "train", "--config", str(RECIPE), "--runs_dir", str(runs_dir),
           "--quiet", "--train.max_seconds", str(seconds), "--train.decay_over", "seconds",
           "--train.max_steps", "100000"]
    print(f"pretraining: scratchllm {' '.join(cmd[3:]).replace(str(ROOT) + os.sep, '')}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=child_env())
    print(f"pretraining took {time.perf_counter() - t0:.0f} s of wall time (BPE, training, samples)", flush=True)
    return runs_dir / "shakespeare-bpe"


def describe_pretrained(run: Path) -> None:
    """One line: the run's model, how long it trained and its last validation loss."""
    from scratchllm.checkpoint.folder import read_state
    from scratchllm.checkpoint.load import resolve_checkpoint

    ckpt = resolve_checkpoint(run)
    state = read_state(ckpt)
    cfg = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
    val = (state.get("last_eval") or {}).get("val_loss")
    print(f"pretrained model: {ckpt} ({cfg['n_layer']} layers, {cfg['n_embd']} dims, context "
          f"{cfg['context_length']}, vocabulary {cfg['vocab_size']:,}); {state.get('step')} steps, "
          f"{state.get('tokens', 0):,} tokens, {state.get('elapsed', 0):.0f} s of training; validation loss "
          f"{val:.3f}" if val is not None else "", flush=True)


def random_twin(run: Path, folder: Path) -> Path:
    """The pretrained run's architecture and tokenizer with fresh random weights, as a checkpoint folder."""
    import torch

    from scratchllm.checkpoint import save_checkpoint
    from scratchllm.interop.load import load_any
    from scratchllm.model import GPT

    model, tokenizer, _ = load_any(run)
    torch.manual_seed(SEED)
    return save_checkpoint(folder, GPT(model.config), tokenizer=tokenizer, state={"step": 0})


# --- the rows -------------------------------------------------------------------------------------
def child_env() -> dict[str, str]:
    return {**os.environ, "SCRATCHLLM_DATA_DIR": str(shared_data_dir())}


def classify_config(init_from: str, runs_dir: str, name: str, settings: dict):
    """The ClassifyConfig of a row: the defaults of `scratchllm finetune classify`, then `settings`
    ({"train": {...}, "lora": "r=8,alpha=16", other top-level fields})."""
    from scratchllm.config.finetune import ClassifyConfig
    from scratchllm.config.lora import LoraConfig

    settings = dict(settings)
    lora = LoraConfig.from_spec(settings.pop("lora")) if "lora" in settings else LoraConfig()
    train = ClassifyConfig().train.replace(progress=False, **settings.pop("train", {}))
    return ClassifyConfig(init_from=init_from, runs_dir=runs_dir, name=name, lora=lora, train=train, **settings)


def finetune_child(init_from: str, runs_dir: str, name: str, settings: dict) -> None:
    """One finetuning row in this (fresh) process: the job; print the report, seconds, trained
    parameters and peak RSS as JSON."""
    from scratchllm.finetune import job

    trained = []
    set_trainable = job.set_trainable

    def counting(model, config, new_modules=()):  # the job's own choice, counted as it makes it
        out = set_trainable(model, config, new_modules)
        trained.append(job.count_trainable(model)[0])
        return out

    job.set_trainable = counting
    config = classify_config(init_from, runs_dir, name, settings)
    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            state = job.finetune(config, "classify", progress=False)
        finally:
            sys.stdout = stdout
    report = json.loads((Path(runs_dir) / name / job.REPORT_FILE).read_text(encoding="utf-8"))
    print(json.dumps({"report": report, "seconds": state.elapsed, "steps": state.step, "trained": trained[0],
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def finetune_row(label: str, init_from: Path, runs: Path, settings: dict) -> dict | None:
    name = "".join(c if c.isalnum() else "-" for c in label).strip("-")
    r = subprocess.run([sys.executable, __file__, "--child", str(init_from), str(runs), name, json.dumps(settings)],
                       capture_output=True, text=True, env=child_env())
    if r.returncode != 0:
        print(f"  {label:48s} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def tfidf_row() -> dict:
    """TF-IDF (word 1- and 2-grams, sublinear tf) + logistic regression on the same split; C chosen
    on validation accuracy. Metrics as the finetuning report computes them."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from scratchllm.evaluate.classification import classification_metrics

    s = sms_spam_split(SEED)
    labels = sorted({r["label"] for r in s["train"]})
    text = {k: [r["text"] for r in v] for k, v in s.items()}
    y = {k: [labels.index(r["label"]) for r in v] for k, v in s.items()}
    t0 = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x_train = vec.fit_transform(text["train"])
    fits = [LogisticRegression(C=c, max_iter=2000).fit(x_train, y["train"]) for c in (0.1, 1.0, 10.0, 100.0, 1000.0)]
    val = [clf.score(vec.transform(text["validation"]), y["validation"]) for clf in fits]
    clf = fits[max(range(len(fits)), key=val.__getitem__)]  # the first of the best
    seconds = time.perf_counter() - t0
    return {"report": {"val": classification_metrics(y["validation"], clf.predict(vec.transform(text["validation"])),
                                                     labels),
                       "test": classification_metrics(y["test"], clf.predict(vec.transform(text["test"])), labels)},
            "seconds": seconds, "C": clf.C, "trained": x_train.shape[1] + 1, "steps": None, "peak_rss_mib": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pretrained", default=None, help="a run folder of configs/shakespeare-bpe.toml to reuse "
                                                       "instead of pretraining (e.g. runs/shakespeare-bpe)")
    ap.add_argument("--runs-dir", default=None, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--quick", action="store_true", help="a 60 s pretraining and one epoch per row")
    ap.add_argument("--only", default=None, help="rows whose label contains this text (an experiment: not recorded)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change every finetuning row (an experiment: not recorded), e.g. --set train.lr=1e-3 "
                         "--set train.epochs=10 --set pooling=mean")
    ap.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    add_record_flag(ap)
    args = ap.parse_args()
    if args.child is not None:
        init_from, runs_dir, name, settings = args.child
        finetune_child(init_from, runs_dir, name, json.loads(settings))
        return
    with recorded("finetune_quality", not args.no_record and args.only is None and not args.set):
        run_all(args)


def changes(items: list[str]) -> dict:
    """--set KEY=VALUE items as row settings (values read as JSON when they parse, else as text)."""
    out: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            v = json.loads(value)
        except json.JSONDecodeError:
            v = value
        if key.startswith("train."):
            out.setdefault("train", {})[key[len("train."):]] = v
        else:
            out[key] = v
    return out


def run_all(args) -> None:
    header("classification finetuning quality: SMS spam, a scratchllm-pretrained GPT vs random init, TF-IDF, LoRA")
    os.environ["SCRATCHLLM_DATA_DIR"] = str(shared_data_dir())
    extra = changes(args.set)
    with tempfile.TemporaryDirectory(prefix="finetune-quality-") as tmp:
        runs = Path(args.runs_dir) if args.runs_dir else Path(tmp)
        run = Path(args.pretrained) if args.pretrained else pretrain(runs / "pretrain", args.quick)
        describe_pretrained(run)
        twin = runs / "random-init"
        if not twin.exists():
            random_twin(run, twin)
        sizes = {k: len(v) for k, v in sms_spam_split(SEED).items()}
        print(f"data: sms-spam balanced and split 70/10/20 with seed {SEED} by finetune.classify: {sizes['train']} "
              f"train / {sizes['validation']} validation / {sizes['test']} test messages; every row the same split")
        print(f"{'row':48s} {'lr':>7s} {'epochs':>6s} {'trained':>10s} {'seconds':>7s} {'peak RSS':>9s} "
              f"{'val acc':>7s} {'test acc':>8s} {'right':>7s} {'test F1':>7s}", flush=True)
        results = {}
        for label, (start, settings) in ROWS.items():
            if args.only and args.only not in label:
                continue
            settings = {**settings, **extra, "train": {**settings.get("train", {}), **extra.get("train", {})}}
            if args.quick:
                settings["train"]["epochs"] = 1.0
            d = finetune_row(label, run if start == "pretrained" else twin, runs, settings)
            if d is None:
                continue
            results[label] = d
            tc = classify_config("x", "x", "x", settings).train
            print_row(label, f"{tc.lr:.0e}", f"{tc.epochs:g}", d)
        if not args.only or "TF-IDF" in args.only:
            d = results["TF-IDF + logistic regression"] = tfidf_row()
            print_row("TF-IDF + logistic regression", f"C={d['C']:g}", "", d)
    print(f"{'reference: the book, OpenAI GPT-2 124M (last block)':48s} {'':>51s} {BOOK_ACCURACY:8.2%} {287:3d}/300")
    conclude(results)


def print_row(label: str, lr: str, epochs: str, d: dict) -> None:
    test, val = d["report"]["test"], d["report"]["val"]
    rss = f"{d['peak_rss_mib']:5,.0f} MiB" if d["peak_rss_mib"] is not None else "-"
    correct = round(test["accuracy"] * test["n"])
    print(f"{label:48s} {lr:>7s} {epochs:>6s} {d['trained']:10,d} {d['seconds']:7.1f} {rss:>9s} "
          f"{val['accuracy']:7.2%} {test['accuracy']:8.2%} {correct:3d}/{test['n']} {test['f1']:7.4f}", flush=True)


def conclude(results: dict) -> None:
    ours = {k: v for k, v in results.items() if k.startswith("pretrained")}
    if ours:
        best = max(ours, key=lambda k: ours[k]["report"]["test"]["accuracy"])
        acc = ours[best]["report"]["test"]["accuracy"]
        print(f"best pretrained row: {best}, test accuracy {acc:.2%}: "
              f"{'reaches' if round(acc, 4) >= BOOK_ACCURACY else 'does NOT reach'} the book's {BOOK_ACCURACY:.2%}")
    for label, d in ours.items():
        twin = results.get(label.replace("pretrained", "random init"))
        if twin:
            gain = d["report"]["test"]["accuracy"] - twin["report"]["test"]["accuracy"]
            print(f"pretraining is worth {gain:+.2%} test accuracy ({label.split(', ', 1)[1]})")
    full, lora = results.get(FULL), results.get(LORA)
    if full and lora:
        print(f"LoRA vs full finetuning ({LORA.split(', ', 1)[1]} vs {FULL.split(', ', 1)[1]}): test accuracy "
              f"{lora['report']['test']['accuracy']:.2%} vs {full['report']['test']['accuracy']:.2%}; "
              f"{lora['seconds']:.0f} s vs {full['seconds']:.0f} s; peak RSS {lora['peak_rss_mib']:,.0f} vs "
              f"{full['peak_rss_mib']:,.0f} MiB; trained parameters {lora['trained']:,} vs {full['trained']:,}")
    print(f"(a test split of 300: one message is 0.33%, and the standard error of an accuracy near 95% is about "
          f"{(0.95 * 0.05 / 300) ** 0.5:.1%})")


if __name__ == "__main__":
    main()
