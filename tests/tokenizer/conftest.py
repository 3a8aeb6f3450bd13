"""Fixtures for tokenizer tests: GPT-2's tokenizer (ours and tiktoken's, from the shared files), a BPE
trained on tinyshakespeare."""

import pytest

from scratchllm.tokenizer.bpe import BPETokenizer


@pytest.fixture(scope="session")
def gpt2_files(shared_data):
    return shared_data / "gpt2" / "encoder.json", shared_data / "gpt2" / "vocab.bpe"


@pytest.fixture(scope="session")
def gpt2_tok(gpt2_files):
    return BPETokenizer.from_gpt2_files(*gpt2_files)


@pytest.fixture(scope="session")
def tiktoken_gpt2(gpt2_files):
    """tiktoken's exact GPT-2 Encoding, built offline from the same files as tiktoken.get_encoding("gpt2")."""
    import tiktoken
    import tiktoken.load
    from tiktoken_ext.openai_public import r50k_pat_str

    encoder_json, vocab_bpe = gpt2_files
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))
    return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)


@pytest.fixture(scope="session")
def shakespeare(shared_data):
    return (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def trained_bpe(shakespeare):
    return BPETokenizer.train(shakespeare, 2048)
