"""Finetuning settings: what every method shares (`FinetuneConfig`) and each method's own.

A finetuning run starts from a trained model (`init_from`: a run, a checkpoint folder, a Hugging
Face folder or OpenAI's GPT-2 folder: anything `scratchllm import` reads), trains it with the one
training loop on a task's data and writes a run folder like pretraining's (checkpoints, metrics,
loss plot, model card) plus the task's report. Settings come as TOML tables (`[train]`, `[lora]`
and top-level keys) and `--key value` flags, as for `scratchllm train`.

- `ClassifyConfig`: the book's chapter 6 (SMS spam) and any labelled CSV/TSV/JSONL.
- `InstructConfig`: the book's chapter 7 (Alpaca-format instructions, or chat messages).
- `DPOConfig`: the book's chapter 7 bonus, direct preference optimisation (Rafailov et al. 2023).

Training defaults are the book's finetuning runs (AdamW, lr 5e-5, weight decay 0.1, a constant
rate, batch 8) unless a method's comment says otherwise. Not here: the methods (`finetune`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scratchllm.config.base import Config, check, check_finite
from scratchllm.config.lora import LoraConfig
from scratchllm.config.train import TrainConfig

TRAINABLE = ("all", "last-blocks", "head")


def book_train(**changes) -> TrainConfig:
    """The book's finetuning settings (chapters 6 and 7): AdamW at 5e-5 with weight decay 0.1 (torch's
    betas 0.9 and 0.999), no warmup, a constant rate, batch 8; evaluation every 50 steps on 5 batches
    (its eval_freq/eval_iter); seed 123 (the book's), which in a finetuning run also seeds the split
    of the data and new weights."""
    base = dict(lr=5e-5, weight_decay=0.1, beta2=0.999, warmup_steps=0, schedule="constant", batch_size=8,
                epochs=5.0, eval_interval=50, eval_batches=5, log_interval=10, seed=123)
    return TrainConfig(**{**base, **changes})


@dataclass
class FinetuneConfig(Config):
    # Folder name under runs_dir; "" means the method's name and its data's (e.g. classify-sms-spam).
    name: str = ""
    # Folder that holds the run folders; `latest` there names the last run.
    runs_dir: str = "runs"
    # The model to start from (required): a run or checkpoint folder, a Hugging Face model folder or
    # OpenAI's GPT-2 folder. Its tokenizer comes with it.
    init_from: str = ""
    # The data: a named dataset (see `scratchllm data list`) or a file.
    data: str = ""
    # Which weights train (without LoRA): "all"; "last-blocks": the last `trainable_blocks` blocks,
    # the final norm and the head (the book's chapter 6 default, with one block); "head": the head only.
    trainable: Literal["all", "last-blocks", "head"] = "all"
    # Blocks that train when trainable is "last-blocks".
    trainable_blocks: int = 1
    # Longest example in tokens; longer ones are truncated (and counted). None: the model's context.
    max_length: int | None = None
    # How to train (the one loop's settings, TrainConfig), with the book's finetuning defaults.
    train: TrainConfig = field(default_factory=book_train)
    # Low-rank adapters (the book's appendix E): with lora.r > 0 only the adapters (and a new head)
    # train, the base weights stay frozen.
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        check_finite(self)
        check("/" not in self.name and self.name not in (".", ".."),
              f"name {self.name!r} must be a plain folder name (no '/')")
        check(self.trainable in TRAINABLE, f"trainable {self.trainable!r} is unknown; choose one of "
                                           f"{', '.join(TRAINABLE)}")
        check(self.trainable_blocks >= 1, f"trainable_blocks must be at least 1, got {self.trainable_blocks}")
        if self.max_length is not None:
            check(self.max_length >= 2, f"max_length must be at least 2 tokens or none, got {self.max_length}")


def check_split(split: tuple[float, ...], name: str = "split") -> None:
    """Three non-negative fractions (train, validation, test) that sum to 1, train and test non-empty."""
    check(len(split) == 3, f"{name} takes three fractions (train, validation, test), got {len(split)}")
    check(all(f >= 0 for f in split) and split[0] > 0 and split[2] > 0,
          f"{name} {','.join(map(str, split))}: train and test fractions must be positive, validation >= 0")
    check(abs(sum(split) - 1.0) < 1e-6, f"{name} {','.join(map(str, split))} must sum to 1")


@dataclass
class ClassifyConfig(FinetuneConfig):
    """`scratchllm finetune classify`: a classification head on the last (or mean) hidden state."""

    # The book's SMS spam collection; or a CSV/TSV/JSONL file with a text and a label column.
    data: str = "sms-spam"
    # Column (CSV/TSV header name, JSONL key) with the text.
    text_column: str = "text"
    # Column with the label.
    label_column: str = "label"
    # The label names in class-id order (e.g. ham,spam); empty: the data's labels sorted by name (which
    # gives the book's ham 0, spam 1). Every label in the data must be named, and every name be in the data.
    labels: tuple[str, ...] = ()
    # Undersample every class to the size of the smallest (the book's create_balanced_dataset).
    balance: bool = True
    # Train, validation and test fractions of the shuffled data (the book's 70/10/20).
    split: tuple[float, ...] = (0.7, 0.1, 0.2)
    # The hidden state the head reads: "last" real token's (the book's) or the "mean" over real tokens.
    pooling: Literal["last", "mean"] = "last"
    # The book's chapter 6: the last block, the final norm and the new head train.
    trainable: Literal["all", "last-blocks", "head"] = "last-blocks"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_split(self.split)
        check(self.text_column != self.label_column, "text_column and label_column must differ")
        check(len(set(self.labels)) == len(self.labels), f"labels {','.join(self.labels)} names a label twice")
        check(len(self.labels) != 1, f"labels {','.join(self.labels)}: a classifier needs at least two classes")


@dataclass
class InstructConfig(FinetuneConfig):
    """`scratchllm finetune instruct`: next-token loss on prompt + response (the book's chapter 7)."""

    # The book's 1,100 Alpaca-style entries; or a JSON/JSONL file of {instruction, input, output}
    # entries, or of {"messages": [{"role", "content"}, ...]} with template "chat".
    data: str = "alpaca-book"
    # "alpaca": the book's prompt format (### Instruction / ### Input / ### Response); "chat": role
    # turns with the model's chat template (saved with the checkpoint for generate, chat and serve).
    template: Literal["alpaca", "chat"] = "alpaca"
    # Leave the prompt's tokens out of the loss (target -100), so the model learns only responses.
    # Off in the book's main run (its exercise 7.2 turns it on).
    mask_prompt: bool = False
    # Train, validation and test fractions (the book's 85/5/10), cut in the book's order: train, then
    # test, then validation (the rest).
    split: tuple[float, ...] = (0.85, 0.05, 0.10)
    # Shuffle the entries (with train.seed) before cutting the split. false cuts them in file order,
    # which reproduces the book's split of its instruction-data.json exactly.
    shuffle: bool = True
    # New tokens per test response written after training (the book's 256); 0 writes none.
    max_new_tokens: int = 256
    # The book's chapter 7: two epochs, batch 8, lr 5e-5.
    train: TrainConfig = field(default_factory=lambda: book_train(epochs=2.0))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_split(self.split)
        check(self.max_new_tokens >= 0, f"max_new_tokens must be >= 0, got {self.max_new_tokens}")


@dataclass
class DPOConfig(FinetuneConfig):
    """`scratchllm finetune dpo`: direct preference optimisation against a frozen reference model."""

    # The book's entries with chosen/rejected responses; or a JSON list or JSON Lines file of
    # {instruction, input, chosen, rejected} entries, or {prompt, chosen, rejected} with a ready prompt
    # (what the web page's ratings produce; the format is documented in scratchllm.finetune.dpo).
    data: str = "alpaca-book-preference"
    # DPO's beta: how far the policy may move from the reference (the book's 0.1, Rafailov et al.'s range).
    beta: float = 0.1
    # Leave the prompt out of the summed log-probabilities (DPO compares responses only). The loss is the
    # same either way (a pair's two sequences share the prompt); the logged rewards are not.
    mask_prompt: bool = True
    # Train, validation and test fractions (the book's 85/5/10).
    split: tuple[float, ...] = (0.85, 0.05, 0.10)
    # The book's DPO run: lr 5e-6, weight decay 0.01, one epoch, batch 8, evaluation every 5 steps.
    train: TrainConfig = field(default_factory=lambda: book_train(lr=5e-6, weight_decay=0.01, epochs=1.0,
                                                                  eval_interval=5))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_split(self.split)
        check(self.beta > 0, f"beta must be positive, got {self.beta}")
