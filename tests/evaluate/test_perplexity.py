"""Perplexity and bits per byte against hand computations on a tiny model."""

import math

import pytest
import torch
from eval_helpers import byte_tokenizer, tiny_gpt

from scratchllm.errors import UserError
from scratchllm.evaluate.perplexity import perplexity, score_ids, stream, windows


def nats_by_hand(model, ids, stride):
    """Each token t >= 1 scored alone: one forward over ids[begin:t], begin the first window start
    (a multiple of the stride) whose window reaches t."""
    context = model.config.context_length
    total = 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):
            begin = max(0, math.ceil((t - context) / stride) * stride)
            logits = model(torch.tensor([ids[begin:t]]))[0, -1]
            total -= float(torch.log_softmax(logits.double(), -1)[ids[t]])
    return total


@pytest.mark.parametrize("stride", [3, 8, 16])
def test_equals_exp_of_the_mean_token_loss_by_hand(stride):
    model = tiny_gpt(context=16)
    ids = torch.randint(0, 256, (70,), generator=torch.Generator().manual_seed(1)).tolist()
    got = score_ids(model, ids, n_bytes=70, stride=stride, batch_size=3, progress=False)
    nats = nats_by_hand(model, ids, stride)
    assert got.tokens == 69
    assert got.nats == pytest.approx(nats, rel=1e-5)
    assert got.perplexity == pytest.approx(math.exp(nats / 69), rel=1e-5)
    assert got.loss == pytest.approx(nats / 69, rel=1e-5)


def test_stride_equal_to_the_context_is_non_overlapping_windows():
    model = tiny_gpt(context=16)
    ids = torch.randint(0, 256, (50,), generator=torch.Generator().manual_seed(2)).tolist()
    got = score_ids(model, ids, n_bytes=50, stride=16, progress=False)
    data = torch.tensor(ids)
    nats, tokens = 0.0, 0
    with torch.no_grad():
        for begin in range(0, 49, 16):  # inputs ids[begin:begin+16], targets one further
            x, y = data[begin: begin + 16][: 49 - begin], data[begin + 1: begin + 17]
            _, loss = model(x[None], y[None])
            nats += float(loss) * len(y)
            tokens += len(y)
    assert got.tokens == tokens == 49 and got.windows == 4
    assert got.nats == pytest.approx(nats, rel=1e-5)


def test_batching_does_not_change_the_result():
    model = tiny_gpt(context=16)
    ids = torch.randint(0, 256, (61,), generator=torch.Generator().manual_seed(3)).tolist()
    one = score_ids(model, ids, 61, stride=5, batch_size=1, progress=False)
    many = score_ids(model, ids, 61, stride=5, batch_size=7, progress=False)
    assert one.tokens == many.tokens and many.nats == pytest.approx(one.nats, rel=1e-6)


def test_bits_per_byte_by_hand():
    model, tok = tiny_gpt(context=16), byte_tokenizer()
    text = "naïve café, déjà vu: über straße " * 2  # more bytes than characters
    got = perplexity(model, tok, text, stride=8, progress=False)
    ids = [256] + tok.encode(text)  # the document follows <|endoftext|>, which is context only
    nats = nats_by_hand(model, ids, 8)
    assert got.bytes == len(text.encode("utf-8")) > len(text)
    assert got.tokens == len(ids) - 1
    assert got.bits_per_byte == pytest.approx(nats / (math.log(2) * got.bytes), rel=1e-5)


def test_documents_are_scored_after_end_of_text_which_is_never_a_target():
    tok = byte_tokenizer()
    ids, scored, n_bytes = stream(tok, ["ab", "", "cde"])
    assert ids == [256, 97, 98, 256, 99, 100, 101]
    assert scored == [False, True, True, False, True, True, True]
    assert n_bytes == 5
    model = tiny_gpt(context=16)
    got = perplexity(model, tok, ["ab", "cde"], stride=16, progress=False)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0].double(), -1)
    nats = -sum(float(logp[i - 1, ids[i]]) for i in range(1, len(ids)) if scored[i])
    assert got.tokens == 5 and got.nats == pytest.approx(nats, rel=1e-5)


def test_a_tokenizer_without_end_of_text_scores_the_joined_text_from_its_second_token():
    from scratchllm.tokenizer.char import CharTokenizer

    tok = CharTokenizer.train("abcde\n")
    ids, scored, n_bytes = stream(tok, ["ab", "cde"])
    assert ids == tok.encode("ab\n\ncde") and scored == [False] + [True] * 6 and n_bytes == 7


def test_windows_score_every_position_once():
    for n in range(2, 40):
        for context in (1, 4, 7):
            for stride in range(1, context + 1):
                seen = []
                for begin, end, new in windows(n, context, stride):
                    assert end - begin <= context and new >= 1
                    seen += list(range(end - new + 1, end + 1))  # target positions
                assert seen == list(range(1, n)), (n, context, stride)


def test_bad_input():
    model, tok = tiny_gpt(context=16), byte_tokenizer()
    with pytest.raises(UserError, match="empty"):
        perplexity(model, tok, "", progress=False)
    with pytest.raises(UserError, match="too short"):
        score_ids(model, [5], 1, progress=False)
    with pytest.raises(UserError, match="stride must be between 1 and the model's context"):
        perplexity(model, tok, "hello", stride=17, progress=False)
    with pytest.raises(UserError, match="batch-size"):
        perplexity(model, tok, "hello", batch_size=0, progress=False)


def test_the_model_is_left_in_its_mode_and_without_gradients():
    model, tok = tiny_gpt(context=16), byte_tokenizer()
    model.train()
    perplexity(model, tok, "some text to score", progress=False)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
