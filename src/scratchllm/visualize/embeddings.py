"""Token embeddings in two dimensions: principal component analysis of chosen words' vectors, and a scatter plot.

`word_ids(tokenizer, words)` finds each word's token. A word must be one token of the vocabulary:
first as it stands in running text, with a leading space (how byte-level BPE vocabularies hold a
word inside a sentence: " king"), else as typed ("king", or " king" typed with its space); a word
that is neither (it would be several pieces, or the word tokenizer's `<|unk|>`) is an error naming
its pieces, since an average of pieces is not the model's vector for the word.

`pca_2d(x)` centres the vectors and projects them on their two directions of largest variance, from
the singular value decomposition (torch.linalg.svd): X - mean = U S V^T, coordinates U S = (X - mean) V.
A component's sign is arbitrary; it is fixed so that the coordinate largest in size is positive.
`explained` is each component's share of the variance (S^2 / sum S^2).

Not here: the embedding table (`model.GPT.tok_emb`), the tokenizers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from scratchllm.errors import UserError
from scratchllm.visualize.figures import label, pyplot


def word_ids(tokenizer: Any, words: Sequence[str]) -> list[tuple[str, int, str]]:
    """(word, token id, the token's text) for each word; see the module doc for the one-token rule.

    >>> from scratchllm.tokenizer.char import CharTokenizer
    >>> word_ids(CharTokenizer.train("abc"), ["c", "a"])  # " c" is two characters: "c" as typed
    [('c', 2, 'c'), ('a', 0, 'a')]
    """
    if len(words) < 2:
        raise UserError("give at least two words to place against each other")
    specials = set(tokenizer.special_tokens.values())
    found: list[tuple[str, int, str]] = []
    for word in words:
        if not word:
            raise UserError("a word is empty; give words of at least one character")
        tried = []
        for form in (" " + word, word):
            try:
                ids = tokenizer.encode(form)
            except UserError:
                if form is word:  # the word as typed cannot be encoded: the tokenizer's error says why
                    raise
                ids = []  # e.g. a character vocabulary without the space
            tried.append(ids)
            if len(ids) == 1 and ids[0] not in specials:
                found.append((word, ids[0], tokenizer.decode_bytes(ids).decode("utf-8", "backslashreplace")))
                break
        else:
            pieces = [tokenizer.decode_bytes([i]).decode("utf-8", "backslashreplace") for i in tried[1]]
            why = "is not in the vocabulary" if any(i in specials for i in tried[1]) else \
                f"is {len(pieces)} tokens ({' '.join(repr(p) for p in pieces)})"
            raise UserError(f"{word!r} {why}, with a leading space too; the embedding table has one vector per "
                            f"token: choose words that are one token")
    seen: dict[int, str] = {}
    for word, i, _ in found:
        if i in seen:
            raise UserError(f"{seen[i]!r} and {word!r} are the same token ({i}); give each token once")
        seen[i] = word
    return found


def pca_2d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(coordinates (n, 2), explained variance ratio (2,)) of the rows of x (n, d), in float64.

    >>> coords, explained = pca_2d(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))  # on a line
    >>> [round(v, 3) for v in coords[:, 0].tolist()], explained.tolist()
    ([-1.414, 0.0, 1.414], [1.0, 0.0])
    """
    x = x.double()
    centred = x - x.mean(dim=0, keepdim=True)  # (n, d)
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)  # u (n, r), s (r,)
    coords = u[:, :2] * s[:2]  # (n, 2) = centred @ V[:, :2]
    if coords.shape[1] < 2:  # one vector's worth of rank: the second axis is zero
        coords = torch.cat([coords, torch.zeros(coords.shape[0], 2 - coords.shape[1], dtype=coords.dtype)], dim=1)
    biggest = coords.abs().argmax(dim=0)  # (2,): the row largest in size, per component
    signs = torch.sign(coords[biggest, torch.arange(2)])
    coords = coords * torch.where(signs == 0, torch.ones_like(signs), signs)
    var = s.pow(2)
    explained = var[:2] / var.sum() if var.sum() > 0 else torch.zeros(2, dtype=x.dtype)
    explained = torch.cat([explained, torch.zeros(2 - explained.shape[0], dtype=x.dtype)])
    return coords, explained


def plot_embeddings(coords: torch.Tensor, labels: Sequence[str], explained: torch.Tensor, title: str = "") -> Any:
    """A scatter plot of `coords` (n, 2), each point labelled; the axes say each component's share of the
    variance. Returns the figure."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    xy = coords.cpu().numpy()
    ax.scatter(xy[:, 0], xy[:, 1], color="tab:blue")
    for (x, y), name in zip(xy, labels):
        ax.annotate(label(name, 16), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"component 1 ({float(explained[0]):.0%} of the variance)")
    ax.set_ylabel(f"component 2 ({float(explained[1]):.0%} of the variance)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.margins(0.2)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
