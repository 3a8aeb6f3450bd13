"""PCA against numpy's SVD (and scikit-learn's PCA); the one-token rule; `scratchllm inspect embeddings`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vis_helpers import read_png

from scratchllm.cli import main
from scratchllm.errors import UserError
from scratchllm.visualize.embeddings import pca_2d, plot_embeddings, word_ids


def numpy_pca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T, (s**2 / (s**2).sum())[:2]


@pytest.mark.parametrize("n, d", [(6, 32), (3, 8), (40, 16)])
def test_pca_equals_numpys_svd_projection_up_to_sign(n, d):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    coords, explained = pca_2d(x)
    ref, ref_explained = numpy_pca(x.numpy())
    for c in range(2):
        sign = np.sign(ref[:, c] @ coords[:, c].numpy())
        np.testing.assert_allclose(coords[:, c].numpy(), sign * ref[:, c], atol=1e-10)
    np.testing.assert_allclose(explained.numpy(), ref_explained, atol=1e-12)
    from sklearn.decomposition import PCA

    np.testing.assert_allclose(np.abs(coords.numpy()), np.abs(PCA(2).fit_transform(x.numpy())), atol=1e-8)


def test_signs_are_fixed_whatever_the_input_order():
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, _ = pca_2d(x)
    b, _ = pca_2d(-x)  # the same cloud mirrored: the same picture
    assert torch.allclose(a, b)
    assert all(float(a[a[:, c].abs().argmax(), c]) > 0 for c in range(2))


def test_words_are_single_tokens_or_a_clear_error(tokenizer):
    found = word_ids(tokenizer, ["I", "had", "Gisburn"])  # the last two are one token only with a leading space
    assert [(w, tokenizer.decode([i])) for w, i, _ in found] == [("I", "I"), ("had", " had"), ("Gisburn", " Gisburn")]
    with pytest.raises(UserError, match="'Gisburnish' is .* tokens"):
        word_ids(tokenizer, ["had", "Gisburnish"])
    with pytest.raises(UserError, match="same token"):
        word_ids(tokenizer, ["had", " had"])
    from scratchllm.tokenizer import train

    words = train("words", ["the cat sat on the mat"])
    with pytest.raises(UserError, match="'dog' is not in the vocabulary"):
        word_ids(words, ["cat", "dog"])


def test_scatter_has_a_labelled_point_per_word(tmp_path):
    coords = torch.tensor([[1.0, 0.5], [-1.0, 0.2], [0.0, -0.7]], dtype=torch.float64)
    fig = plot_embeddings(coords, ["a", "b", "c"], torch.tensor([0.7, 0.2]))
    [ax] = [ax for ax in fig.axes if ax.collections]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), coords.numpy())
    assert [t.get_text() for t in ax.texts] == ["'a'", "'b'", "'c'"]
    assert "70%" in ax.get_xlabel() and "20%" in ax.get_ylabel()


def test_inspect_embeddings_places_the_words(checkpoints, tmp_path, figures, capsys):
    from scratchllm.checkpoint import load_model

    out = tmp_path / "emb.png"
    words = ["had", "Gisburn", "his", "though", "to"]
    assert main(["inspect", "embeddings", "-m", str(checkpoints["llama"]), *words, "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in printed if line.split() and line.split()[0] in words]
    assert [r[0] for r in rows] == words
    model, tok, _ = load_model(checkpoints["llama"])
    ids = [i for _, i, _ in word_ids(tok, words)]
    coords, _ = pca_2d(model.tok_emb.weight.detach()[ids])
    np.testing.assert_allclose([[float(r[-2]), float(r[-1])] for r in rows], coords.numpy(), atol=1e-3)
    [(panels, size, path)] = figures
    assert path == out and len(panels) == 1
    np.testing.assert_allclose(panels[0].collections[0].get_offsets(), coords.numpy(), atol=1e-6)
    read_png(out)
