"""Tokenizers behind one interface (`base.Tokenizer`): char, words, byte-level BPE, WordPiece.

`load(path)` reads any saved tokenizer.
"""

from scratchllm.tokenizer.base import TOKENIZER_FILE, Tokenizer, from_dict, load_file

load = load_file

__all__ = ["TOKENIZER_FILE", "Tokenizer", "from_dict", "load", "load_file"]
