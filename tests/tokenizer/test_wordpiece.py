"""WordPiece: likelihood-score training, greedy longest-match encoding, [UNK], decode, save/load."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchllm.errors import UserError
from scratchllm.tokenizer import load, train
from scratchllm.tokenizer.wordpiece import UNK, WordPieceTokenizer, split_words, train_wordpiece


def naive_wordpiece(word_counts, n_new):
    """Recompute every score after every merge."""
    from collections import Counter

    words = [[c if i == 0 else "##" + c for i, c in enumerate(w)] for w in word_counts]
    weights = list(word_counts.values())
    out = []
    for _ in range(n_new):
        tc, pc = Counter(), Counter()
        for w, n in zip(words, weights):
            for t in w:
                tc[t] += n
            for p in zip(w, w[1:]):
                pc[p] += n
        if not pc:
            break
        a, b = min(pc, key=lambda p: (-pc[p] / (tc[p[0]] * tc[p[1]]), p))
        z = a + (b[2:] if b.startswith("##") else b)
        out.append(z)
        new_words = []
        for w in words:
            m, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                    m.append(z)
                    i += 2
                else:
                    m.append(w[i])
                    i += 1
            new_words.append(m)
        words = new_words
    return out


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(alphabet="abcd", min_size=1, max_size=7), st.integers(1, 9), min_size=1, max_size=12),
       st.integers(0, 15))
def test_matches_naive_trainer(word_counts, n_new):
    alphabet = {c if i == 0 else "##" + c for w in word_counts for i, c in enumerate(w)}
    try:
        got = train_wordpiece(dict(sorted(word_counts.items())), len(alphabet) + n_new, 0)
    except UserError:
        return  # cannot support that many tokens (tested below)
    expected = naive_wordpiece(dict(sorted(word_counts.items())), n_new)
    # the same new strings in the same order (a merge can re-create an existing string)
    assert [t for t in got[len(alphabet):]] == [t for t in dict.fromkeys(expected) if t not in alphabet][:n_new]


def test_trains_on_shakespeare_and_encodes(shared_data, tmp_path):
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000]
    tok = train("wordpiece", [text], 1000)
    assert tok.vocab_size == 1000 and tok.special_tokens[UNK] == 1
    ids = tok.encode("First Citizen: we are accounted poor citizens")
    assert tok.decode(ids) == "first citizen: we are accounted poor citizens"
    for word in ("the", "king", "citizens"):  # a word starts with a plain piece, continues with ## pieces
        pieces = [tok.tokens[i] for i in tok.encode(word)]
        assert not pieces[0].startswith("##") and all(p.startswith("##") for p in pieces[1:])
    assert tok.encode("☃") == [tok.special_tokens[UNK]]  # no piece covers an unseen character
    again = load(tok.save(tmp_path / "wp.json"))
    assert again.encode(text[:5000]) == tok.encode(text[:5000])


def test_errors():
    with pytest.raises(UserError, match="smaller than the WordPiece base alphabet"):
        WordPieceTokenizer.train("hello world", 8)
    with pytest.raises(UserError, match="larger than this text supports"):
        WordPieceTokenizer.train("hello world", 500)
    with pytest.raises(UserError, match="special token"):
        WordPieceTokenizer.train("hello world", 20).encode("[CLS] hello")


def test_split_words_bert_style():
    assert split_words("Don't STOP—now!", lowercase=True) == ["don", "'", "t", "stop", "—", "now", "!"]
    assert split_words("Éa 東京", lowercase=False) == ["Éa", "東", "京"]
