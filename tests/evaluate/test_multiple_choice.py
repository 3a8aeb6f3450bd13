"""Multiple-choice scoring: sums of continuation log-probabilities, acc and acc_norm, on models whose
answers are known, and the JSONL reader's errors."""

import json

import pytest
import torch
from eval_helpers import Bigram, byte_tokenizer, tiny_gpt

from scratchllm.errors import UserError
from scratchllm.evaluate.multiple_choice import Item, encode_pair, loglikelihoods, read_items, score_items


def counting_bigram(context: int = 64) -> Bigram:
    """Prefers the next byte (logit 5), except c -> d (logit 2): choices following the alphabet win."""
    table = torch.zeros(257, 257)
    for b in range(255):
        table[b, b + 1] = 5.0
    table[ord("c"), ord("d")] = 2.0
    return Bigram(table, context)


def test_the_sum_of_the_continuations_log_probabilities_by_hand():
    model, tok = counting_bigram(), byte_tokenizer()
    items = [Item("abc", ("defg", "dxyz"), 0), Item("klm", ("nop", "nzz", "qrs"), 0)]
    result = score_items(model, tok, items, delimiter="", progress=False)

    def by_hand(context, choice):
        ids = tok.encode(context + choice)
        return sum(model.logp(ids[i - 1], ids[i]) for i in range(len(context), len(ids)))

    for item, scores in zip(items, result.scores):
        assert scores == pytest.approx([by_hand(item.context, c) for c in item.choices], rel=1e-6)
    assert result.acc == 1.0 and result.predictions == [0, 0] and result.items == 2


def test_acc_norm_divides_by_the_choices_length_in_characters():
    model, tok = counting_bigram(), byte_tokenizer()
    # "d" alone: one poor step (c -> d). "defghij": the same poor step and six good ones, a smaller sum
    # but a larger sum per character
    items = [Item("abc", ("d", "defghij"), 1)]
    result = score_items(model, tok, items, delimiter="", progress=False)
    short, long = result.scores[0]
    assert short > long and long / 7 > short / 1
    assert result.predictions == [0] and result.predictions_norm == [1]
    assert result.acc == 0.0 and result.acc_norm == 1.0


def test_the_delimiter_and_trailing_spaces_go_to_the_continuation_as_in_the_harness():
    tok = byte_tokenizer()
    assert encode_pair(tok, "abc ", "d") == (tok.encode("abc"), tok.encode(" d"))
    assert encode_pair(tok, "", "d") == ([256], tok.encode("d"))
    from scratchllm.data.sources import gpt2_tokenizer

    try:
        gpt2 = gpt2_tokenizer(offline=True)
    except UserError:
        return  # the BPE case needs GPT-2's files; the byte case above holds either way
    ctx, cont = encode_pair(gpt2, "The cat sat on the ", "mat")
    assert gpt2.decode(ctx) == "The cat sat on the" and gpt2.decode(cont) == " mat"


def test_batched_scores_equal_one_forward_per_choice_on_a_real_gpt():
    model, tok = tiny_gpt(context=16), byte_tokenizer()
    requests = [encode_pair(tok, c, " " + x) for c, x in
                [("hello", "world"), ("a much longer context than sixteen", "tail"), ("x", "yz" * 12), ("", "solo")]]
    batched = loglikelihoods(model, requests, batch_size=3, progress=False)
    with torch.no_grad():
        for (ctx, cont), got in zip(requests, batched):
            full = (ctx + cont)[-17:]  # the last context + 1 ids: the start of a long input is dropped
            n = min(len(cont), len(full) - 1)
            logp = torch.log_softmax(model(torch.tensor([full[:-1]]))[0].double(), -1)
            want = sum(float(logp[i - 1, full[i]]) for i in range(len(full) - n, len(full)))
            assert got == pytest.approx(want, rel=1e-5)


def test_a_model_trained_on_a_pattern_picks_the_pattern():
    """A tiny GPT trained for a few steps to repeat "abcd" prefers the choice that continues it."""
    model, tok = tiny_gpt(context=16), byte_tokenizer()
    model.train()
    data = torch.tensor(tok.encode("abcd" * 40))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(100):
        starts = torch.randint(0, len(data) - 17, (8,), generator=torch.Generator().manual_seed(step))
        x = torch.stack([data[s: s + 16] for s in starts])
        y = torch.stack([data[s + 1: s + 17] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    items = [Item("abcdab", ("cd", "dc"), 0), Item("bcdabc", ("da", "ad", "bb"), 0),
             Item("dabcda", ("ac", "bc"), 1), Item("cdabcd", ("cb", "ab", "aa"), 1)]
    result = score_items(model, tok, items, delimiter="", progress=False)
    assert result.acc == 1.0 and result.acc_norm == 1.0


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def test_reading_items_in_the_common_styles(tmp_path):
    p = write_jsonl(tmp_path / "items.jsonl", [
        {"context": "a", "choices": ["b", "c"], "label": 1},
        "",
        {"query": "q", "choices": ["x", "y", "z"], "gold": 2},
        {"context": "r", "choices": ["s", "t"], "answer": 0, "id": "extra fields are kept out of the way"},
    ])
    assert read_items(p) == [Item("a", ("b", "c"), 1, 1), Item("q", ("x", "y", "z"), 2, 3), Item("r", ("s", "t"), 0, 4)]


@pytest.mark.parametrize("record, message", [
    ({"choices": ["a", "b"], "label": 0}, 'no "context" (or "query") field'),
    ({"context": "c", "label": 0}, 'no "choices" field'),
    ({"context": "c", "choices": ["a"], "label": 0}, "two or more non-empty strings"),
    ({"context": "c", "choices": ["a", ""], "label": 0}, "two or more non-empty strings"),
    ({"context": "c", "choices": ["a", "b"]}, 'no "label"'),
    ({"context": "c", "choices": ["a", "b"], "label": 2}, '"label" 2 is out of range for 2 choices'),
    ({"context": "c", "choices": ["a", "b"], "gold": -1}, '"gold" -1 is out of range'),
    ({"context": "c", "choices": ["a", "b"], "label": "1"}, "must be a whole number"),
    ({"context": "c", "choices": ["a", "b"], "label": True}, "must be a whole number"),
    ({"context": 5, "choices": ["a", "b"], "label": 0}, '"context" must be a string'),
    ([1, 2], "expected a JSON object"),
    ("{not json", "not valid JSON"),
])
def test_a_bad_item_names_the_file_and_line(tmp_path, record, message):
    p = write_jsonl(tmp_path / "bad.jsonl", [{"context": "ok", "choices": ["a", "b"], "label": 0}, record])
    with pytest.raises(UserError) as e:
        read_items(p)
    assert str(e.value).startswith(f"{p}:2: ") and message in str(e.value)


def test_an_empty_or_missing_file_is_an_error(tmp_path):
    with pytest.raises(UserError, match="holds no items"):
        read_items(write_jsonl(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(UserError, match="not found"):
        read_items(tmp_path / "missing.jsonl")
