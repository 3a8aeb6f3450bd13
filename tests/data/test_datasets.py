"""Windows and batches: the book's sliding windows, random windows with exact resume, eval batches."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchllm.data.datasets import EvalBatches, RandomWindowBatches, SlidingWindowDataset, create_dataloader
from scratchllm.errors import UserError


def test_sliding_window_matches_the_books_gptdatasetv1(shared_data, char_tok):
    from llms_from_scratch.ch02 import GPTDatasetV1

    from scratchllm.tokenizer.char import CharTokenizer

    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    tok = CharTokenizer.train(text, special_tokens=["<|endoftext|>"])
    for max_length, stride in ((32, 32), (16, 5), (64, 100)):
        book = GPTDatasetV1(text, tok, max_length, stride)
        ours = SlidingWindowDataset(tok.encode(text), max_length, stride)
        assert len(ours) == len(book)
        for i in (0, 1, len(book) // 2, len(book) - 1):
            x, y = ours[i]
            assert x.dtype == torch.int64 and torch.equal(x, book[i][0]) and torch.equal(y, book[i][1])


def test_create_dataloader_is_the_books_loader_with_a_seed(shared_data):
    from scratchllm.tokenizer.char import CharTokenizer

    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    tok = CharTokenizer.train(text)
    first = [x for x, _ in create_dataloader(text, tok, batch_size=8, max_length=16, stride=16, seed=3)]
    again = [x for x, _ in create_dataloader(text, tok, batch_size=8, max_length=16, stride=16, seed=3)]
    other = [x for x, _ in create_dataloader(text, tok, batch_size=8, max_length=16, stride=16, seed=4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert first[0].shape == (8, 16) and len(first) == (len(text) - 16 + 15) // 16 // 8
    ordered = next(iter(create_dataloader(text, tok, batch_size=2, max_length=4, stride=4, shuffle=False)))
    assert torch.equal(ordered[0], torch.tensor([tok.encode(text[:4]), tok.encode(text[4:8])]))


def test_random_windows_are_next_token_pairs_in_range():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = RandomWindowBatches(tokens, batch_size=4, context_length=16, seed=0)
    for _ in range(50):
        x, y = next(batches)
        assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
        assert int(x.min()) >= 0 and int(y.max()) <= 999
    # every start 0 .. n - T - 1 is reachable (the last window's target ends on the last token)
    starts = np.concatenate([RandomWindowBatches(np.arange(20), 64, 16, seed=s).starts(0) for s in range(5)])
    assert set(starts.tolist()) == set(range(4))


def test_random_windows_are_deterministic_and_resume_exactly(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 500, size=5000).astype(np.uint16)
    a = RandomWindowBatches(tokens, 3, 32, seed=7)
    reference = [next(a) for _ in range(12)]
    b = RandomWindowBatches(tokens, 3, 32, seed=7)
    for _ in range(5):
        next(b)
    state = json.loads(json.dumps(b.state_dict()))  # must survive a JSON round trip
    (tmp_path / "state.json").write_text(json.dumps(state))
    c = RandomWindowBatches(tokens, 3, 32, seed=0)
    c.load_state_dict(json.loads((tmp_path / "state.json").read_text()))
    for k in range(5, 12):
        x, y = next(c)
        assert torch.equal(x, reference[k][0]) and torch.equal(y, reference[k][1])
    assert not torch.equal(next(RandomWindowBatches(tokens, 3, 32, seed=8))[0], reference[0][0])
    with pytest.raises(UserError, match="saved with batch_size=3, this one has batch_size=4"):
        RandomWindowBatches(tokens, 4, 32).load_state_dict(state)


def test_eval_batches_are_fixed_and_cover_the_split():
    tokens = np.arange(10_000, dtype=np.uint32)
    ev = EvalBatches(tokens, batch_size=4, context_length=8, n_batches=5)
    first, second = list(ev), list(ev)
    assert len(first) == len(ev) == 5
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second))
    starts = torch.cat([x[:, 0] for x, _ in first])
    assert int(starts[0]) == 0 and int(starts[-1]) == 10_000 - 9 and bool((starts[1:] > starts[:-1]).all())


def test_short_corpus_says_how_many_tokens_and_how_many_are_needed():
    with pytest.raises(UserError, match="the corpus has 10 tokens; a window of 16 tokens plus its target needs at "
                                        "least 17"):
        RandomWindowBatches(list(range(10)), 2, 16, seed=0)
    with pytest.raises(UserError, match="the validation split has 5 tokens"):
        EvalBatches(np.arange(5), 2, 8, 1, what="the validation split")
    with pytest.raises(UserError, match="the evaluation split has 5 tokens"):  # any split: no name assumed
        EvalBatches(np.arange(5), 2, 8, 1)
    with pytest.raises(UserError, match="the text has 3 tokens"):
        SlidingWindowDataset([1, 2, 3], 4, 1)


@settings(max_examples=25, deadline=None)
@given(n_tokens=st.integers(9, 400), batch_size=st.integers(1, 5), context=st.integers(1, 8),
       seed=st.integers(0, 2**32), k=st.integers(0, 6))
def test_resume_after_any_number_of_batches(n_tokens, batch_size, context, seed, k):
    tokens = np.arange(n_tokens) % 97
    original = RandomWindowBatches(tokens, batch_size, context, seed)
    expected = [next(original) for _ in range(k + 3)][k:]
    resumed = RandomWindowBatches(tokens, batch_size, context, seed=0)
    resumed.load_state_dict({"seed": seed, "batches_drawn": k})
    for x, y in expected:
        rx, ry = next(resumed)
        assert torch.equal(rx, x) and torch.equal(ry, y)
