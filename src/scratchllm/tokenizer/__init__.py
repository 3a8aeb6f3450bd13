"""Tokenizers behind one interface (`base.Tokenizer`): char, words, byte-level BPE, WordPiece.

`load(path)` reads any saved tokenizer; `train(kind, texts, vocab_size, **options)` trains one;
`gpt2(data_dir)` is GPT-2's own; `build(config, texts)` follows a TokenizerConfig.
"""

from scratchllm.tokenizer.base import TOKENIZER_FILE, Tokenizer, from_dict, load
from scratchllm.tokenizer.factory import build, gpt2, gpt2_files, train

__all__ = ["TOKENIZER_FILE", "Tokenizer", "build", "from_dict", "gpt2", "gpt2_files", "load", "train"]
