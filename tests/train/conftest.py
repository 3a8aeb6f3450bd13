"""The tiny pretraining recipe the CLI, resume and lock tests train with: a small local text file,
a 300-token BPE trained in-process, a 2-layer GPT, 12 steps."""

import pytest

TINY = """name = "tiny"
prompt = "The"
[data]
dataset = "{data}"
tokenizer = {{ kind = "bpe", vocab_size = 300 }}
[model]
n_layer = 2
n_head = 2
n_embd = 32
context_length = 32
[train]
max_steps = 12
batch_size = 4
eval_interval = 6
eval_batches = 2
peak_flops = 1e9
threads = 1
[sample]
max_new_tokens = 8
"""


@pytest.fixture
def recipe(tmp_path, shared_data):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY.format(data=shared_data / "the-verdict.txt"))
    return p
