"""Classification data: parity with the book's chapter 6 code (rows and token ids), reading labelled
files and their errors, label order, and padding that does not change a text's logits."""

import csv
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from finetune_helpers import gpt2_tokenizer

from scratchllm.config.model import ModelConfig
from scratchllm.data.sources import load_records
from scratchllm.errors import UserError
from scratchllm.finetune import classify_data as data
from scratchllm.finetune.classify import classifier_from, logits
from scratchllm.model import GPT


def _rows(df: pd.DataFrame) -> list[tuple[str, str]]:
    return list(zip(df["Label"], df["Text"], strict=True))


def _pairs(records) -> list[tuple[str, str]]:
    return [(r["label"], r["text"]) for r in records]


@pytest.mark.parametrize("n,size,seed", [(4827, 747, 123), (1494, 1494, 123), (10, 3, 0), (7, 7, 42)])
def test_sample_is_pandas_sample(n, size, seed):
    df = pd.DataFrame({"i": range(n)})
    assert data.sample(n, size, seed).tolist() == df.sample(size, random_state=seed)["i"].tolist()


def test_balance_split_and_ids_equal_the_books_ch06(shared_data, tmp_path):
    from llms_from_scratch.ch06 import SpamDataset, create_balanced_dataset, random_split

    records = load_records("sms-spam")
    df = pd.DataFrame({"Label": [r["label"] for r in records], "Text": [r["text"] for r in records]})
    labels = data.label_names(records)
    assert labels == ["ham", "spam"]  # sorted names: the book's ham 0, spam 1

    book_balanced = create_balanced_dataset(df)
    ours = data.balance(records, labels, seed=123)
    assert _pairs(ours) == _rows(book_balanced) and len(ours) == 2 * 747

    book_splits = random_split(book_balanced, 0.7, 0.1)
    our_splits = data.split(ours, (0.7, 0.1, 0.2), seed=123)
    for book, mine in zip(book_splits, our_splits, strict=True):
        assert _pairs(mine) == _rows(book)
    assert [len(s) for s in our_splits] == [1045, 149, 300]

    tok = gpt2_tokenizer(shared_data)
    reference = tok.tiktoken_encoding  # tiktoken's GPT-2 encoding (what the book passes), from the same files
    book_sets = []
    for name, book in zip(("train", "val", "test"), book_splits, strict=True):
        book = book.assign(Label=book["Label"].map({"ham": 0, "spam": 1}))  # as the book does before saving
        book.to_csv(tmp_path / f"{name}.csv", index=None)
        max_length = book_sets[0].max_length if book_sets else None  # the book: val/test cut to train's longest
        book_sets.append(SpamDataset(tmp_path / f"{name}.csv", reference, max_length=max_length))
    longest = book_sets[0].max_length
    pad = data.pad_id(tok)
    assert pad == 50256
    for book_set, rows in zip(book_sets, our_splits, strict=True):
        ids, _ = data.encode([r["text"] for r in rows], tok, longest)
        examples = [(x, labels.index(r["label"])) for x, r in zip(ids, rows, strict=True)]
        x, lengths, y = data.collate(examples, pad, multiple=1)  # the exact longest, as the book
        padded = torch.full((len(ids), longest), pad)
        padded[:, :x.shape[1]] = x  # our batch pads to its own longest; the book to the train split's
        assert torch.equal(padded, torch.stack([book_set[i][0] for i in range(len(book_set))]))
        assert y.tolist() == [int(book_set[i][1]) for i in range(len(book_set))]
        assert lengths.tolist() == [len(t) for t in ids]


def test_balance_with_three_classes_and_ties():
    records = [{"text": f"t{i}", "label": lab} for i, lab in enumerate("aaaaabbbccc")]
    out = data.balance(records, ["c", "b", "a"], seed=1)
    assert [r["label"] for r in out] == list("cccbbbaaa")
    assert [r["text"] for r in out[:6]] == ["t8", "t9", "t10", "t5", "t6", "t7"]  # smallest classes kept in order
    assert len({r["text"] for r in out}) == 9
    train, val, test = data.split(list(range(10)), (0.7, 0.1, 0.2), seed=5)
    assert (len(train), len(val), len(test)) == (7, 1, 2) and sorted(train + val + test) == list(range(10))


def test_label_names_order_and_errors():
    records = [{"text": "x", "label": lab} for lab in ("spam", "ham", "ham")]
    assert data.label_names(records) == ["ham", "spam"]
    assert data.label_names(records, ("spam", "ham")) == ["spam", "ham"]
    with pytest.raises(UserError, match="unknown label 'eggs' in labels ham,eggs: d.csv has the labels ham, spam"):
        data.label_names(records, ("ham", "eggs"), source="d.csv")
    with pytest.raises(UserError, match="has the label 'spam', which labels ham,other does not name"):
        data.label_names(records + [{"text": "y", "label": "other"}], ("ham", "other"))
    with pytest.raises(UserError, match=r"one class only \('ham', 2 texts\)"):
        data.label_names(records[1:])


def test_read_csv_tsv_jsonl_and_their_errors(tmp_path):
    (tmp_path / "a.csv").write_text('body,kind\n"hello, you",x\nbye,y\n', encoding="utf-8")
    assert data.read_labelled(str(tmp_path / "a.csv"), "body", "kind") == [
        {"text": "hello, you", "label": "x"}, {"text": "bye", "label": "y"}]
    (tmp_path / "a.tsv").write_text("text\tlabel\nhi there\t1\n", encoding="utf-8")
    assert data.read_labelled(str(tmp_path / "a.tsv")) == [{"text": "hi there", "label": "1"}]
    (tmp_path / "a.jsonl").write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": "no"}\n')
    assert data.read_labelled(str(tmp_path / "a.jsonl")) == [{"text": "a", "label": "1"}, {"text": "b", "label": "no"}]

    with pytest.raises(UserError, match=r"a.csv has no column 'text' \(columns: body, kind\)"):
        data.read_labelled(str(tmp_path / "a.csv"))
    (tmp_path / "gap.csv").write_text("text,label\nok,x\nno label,\nalso none, \n", encoding="utf-8")
    with pytest.raises(UserError, match=r"labels missing: fill in the 'label' column of .*gap.csv \(line 3 and 1 more"):
        data.read_labelled(str(tmp_path / "gap.csv"))
    (tmp_path / "gap.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n')
    with pytest.raises(UserError, match=r"labels missing: .*gap.jsonl \(line 2 have none"):
        data.read_labelled(str(tmp_path / "gap.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b",\n')
    with pytest.raises(UserError, match="bad.jsonl line 2 is not valid JSON"):
        data.read_labelled(str(tmp_path / "bad.jsonl"))
    (tmp_path / "list.jsonl").write_text('{"text": "a", "label": "x"}\n[1]\n')
    with pytest.raises(UserError, match="list.jsonl line 2 holds a JSON list"):
        data.read_labelled(str(tmp_path / "list.jsonl"))
    (tmp_path / "empty.csv").write_text("  \n")
    with pytest.raises(UserError, match="empty.csv is empty"):
        data.read_labelled(str(tmp_path / "empty.csv"))
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(UserError, match="header.csv has a header but no rows"):
        data.read_labelled(str(tmp_path / "header.csv"))
    (tmp_path / "notext.csv").write_text("text,label\n,x\n")
    with pytest.raises(UserError, match="notext.csv line 2: the 'text' column is empty"):
        data.read_labelled(str(tmp_path / "notext.csv"))
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(UserError, match="read .csv, .tsv, .jsonl files"):
        data.read_labelled(str(tmp_path / "a.txt"))
    with pytest.raises(UserError, match="not found"):
        data.read_labelled(str(tmp_path / "missing.csv"))
    with pytest.raises(UserError, match="not a labelled dataset"):
        data.read_labelled("alpaca-book")


def test_labelling_file_reads_back_once_labelled(tmp_path):
    rows = [{"text": 'say "hi", ok', "label": "spam", "probability": 0.51, "uncertainty": 0.98},
            {"text": "line\nbreak", "label": "ham", "probability": 0.6, "uncertainty": 0.8}]
    for suffix in (".csv", ".tsv", ".jsonl"):
        path = tmp_path / f"out{suffix}"
        data.write_for_labelling(rows, path, "body", "kind")
        assert data.read_texts(path, "body") == [r["text"] for r in rows]
        with pytest.raises(UserError, match=f"labels missing: fill in the 'kind' column of {path}"):
            data.read_labelled(str(path), "body", "kind")
        if suffix == ".jsonl":
            filled = "".join(json.dumps({**json.loads(line), "kind": "ham"}) + "\n"
                             for line in path.read_text().splitlines())
        else:
            delim = "\t" if suffix == ".tsv" else ","
            table = list(csv.reader(io.StringIO(path.read_text(), newline=""), delimiter=delim))
            for row in table[1:]:
                row[1] = row[2]  # a person accepts the guesses
            buf = io.StringIO()
            csv.writer(buf, delimiter=delim, lineterminator="\n").writerows(table)
            filled = buf.getvalue()
        path.write_text(filled)
        got = data.read_labelled(str(path), "body", "kind")
        assert [r["text"] for r in got] == [r["text"] for r in rows]
        assert [r["label"] for r in got] == (["ham", "ham"] if suffix == ".jsonl" else ["spam", "ham"])


def _classifier(pooling_seed=0, **changes):
    torch.manual_seed(pooling_seed)
    base = GPT(ModelConfig(vocab_size=100, context_length=32, n_layer=2, n_head=2, n_embd=32, **changes))
    return classifier_from(base, 3, seed=1).eval()


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("position", ["learned", "rope"])
def test_padding_does_not_change_a_texts_logits(pooling, position):
    changes = {} if position == "learned" else {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False}
    model = _classifier(**changes)
    rng = np.random.default_rng(0)
    texts = [rng.integers(0, 100, size=n).tolist() for n in (3, 11, 7, 1)]
    with torch.no_grad():
        alone = torch.cat([logits(model, torch.tensor([t]), torch.tensor([len(t)]), pooling) for t in texts])
        x, lengths, _ = data.collate([(t, 0) for t in texts], pad=99)
        assert x.shape == (4, 16) and x[3, 1:].eq(99).all()  # the longest, 11, rounded up to 16
        batched = logits(model, x, lengths, pooling)
        x2, _, _ = data.collate([(t, 0) for t in texts] + [(list(range(20)), 0)], pad=5, multiple=1)  # 20 wide
        batched2 = logits(model, x2, torch.tensor([*lengths.tolist(), 20]), pooling)[:4]
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched2, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(alone[0], alone[1])  # different texts, different logits


def test_classifier_keeps_the_source_weights_and_a_seeded_head():
    torch.manual_seed(0)
    base = GPT(ModelConfig(vocab_size=100, context_length=32, n_layer=2, n_head=2, n_embd=32))
    a, b = classifier_from(base, 2, seed=123), classifier_from(base, 2, seed=123)
    assert a.config.n_classes == 2 and not a.config.tie_weights and a.lm_head.weight.shape == (2, 32)
    assert not any(t.is_meta for t in [*a.parameters(), *a.buffers()])  # built on meta, every tensor real
    for name, p in base.state_dict().items():
        if not name.startswith("lm_head"):
            assert torch.equal(a.state_dict()[name], p), name
    torch.manual_seed(123)
    book_head = torch.nn.Linear(32, 2)  # the book: torch.manual_seed(123), then the new out_head
    assert torch.equal(a.lm_head.weight, book_head.weight) and torch.equal(a.lm_head.bias, book_head.bias)
    assert torch.equal(a.lm_head.weight, b.lm_head.weight)
    assert torch.equal(base.features(torch.tensor([[1, 2, 3]])), a.features(torch.tensor([[1, 2, 3]])))
