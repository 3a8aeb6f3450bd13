"""TokenizerConfig: which tokenizer a run trains (or loads), with its size and options.

Used by the data pipeline (DataConfig.tokenizer) and `scratchllm tokenizer train`. What it is not:
the tokenizer itself (scratchllm.tokenizer builds it from this with `build`).
"""

from __future__ import annotations

from dataclasses import dataclass

from scratchllm.config.base import Config, check

KINDS = ("char", "words", "bpe", "wordpiece", "gpt2")


@dataclass
class TokenizerConfig(Config):
    # bpe: byte-level BPE trained on the corpus (GPT-2's algorithm), the default for our own models.
    # gpt2: GPT-2's released vocabulary (needed to load GPT-2 weights); char, words, wordpiece: teaching.
    kind: str = "bpe"
    # Total ids including special tokens. 4096 suits the ~5 MB Shakespeare corpus (about 3.7 bytes
    # per token); None means: char/words keep every symbol seen, bpe/wordpiece use 4096; gpt2 is 50257.
    vocab_size: int | None = None
    # Pre-tokenisation regex for bpe: "gpt2" (GPT-2's), "gpt4" (cl100k's) or a regex of your own.
    pattern: str = "gpt2"
    # <|endoftext|> separates documents and ends generations (GPT-2's convention). WordPiece uses
    # BERT's [PAD] [UNK] [CLS] [SEP] [MASK] when this is left at the default.
    special_tokens: tuple[str, ...] = ("<|endoftext|>",)
    # bpe: a pair must occur this often to be merged (1 merges while any pair is left, as GPT-2 did).
    min_frequency: int = 1
    # wordpiece: lowercase and strip accents first, as BERT-uncased does.
    lowercase: bool = True
    # A saved tokenizer file to load instead of training (kind is then taken from the file).
    path: str | None = None

    def __post_init__(self) -> None:
        check(self.kind in KINDS, f"tokenizer.kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        check(self.vocab_size is None or self.vocab_size > 0,
              f"tokenizer.vocab_size: must be a positive number of tokens, got {self.vocab_size}")
        check(self.min_frequency >= 1, f"tokenizer.min_frequency: must be at least 1, got {self.min_frequency}")
        check(len(set(self.special_tokens)) == len(self.special_tokens),
              "tokenizer.special_tokens: a special token is listed twice")
        check(all(self.special_tokens), "tokenizer.special_tokens: a special token is empty")
        check(bool(self.pattern), "tokenizer.pattern: use gpt2, gpt4 or a regex")
        if self.kind == "bpe" and self.pattern not in ("gpt2", "gpt4"):
            import regex

            try:
                regex.compile(self.pattern)
            except regex.error as e:
                check(False, f"tokenizer.pattern: {self.pattern!r} is not a valid regex ({e})")
