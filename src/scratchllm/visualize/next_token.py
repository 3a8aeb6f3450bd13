"""The next-token distribution, and how the sampler's steps reshape it: the book's decoding figures, live.

`next_token_logits(model, ids)` is the model's scores for the token after `ids`. `sampler_steps`
follows `generate.sampling.sample_next` step by step (temperature, then top-k, then top-p), with its
own functions, and gives the probabilities after each step: the last is the distribution the sampler
draws from (the tests draw from both with one seed and get the same tokens). Temperature 0 is greedy:
all the probability on the most likely token, and top-k and top-p change nothing after it. The
repetition penalty, which depends on the text generated so far, is left out.

`plot_next_token` draws one bar chart per step over the same most likely tokens.

Not here: the sampler itself (`generate.sampling`), the generation loop (`generate.engine`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from scratchllm.generate.sampling import top_k_filter, top_p_filter
from scratchllm.runtime import eval_mode
from scratchllm.visualize.attention import check_length
from scratchllm.visualize.figures import label, pyplot


def next_token_logits(model: Any, ids: Sequence[int]) -> torch.Tensor:
    """The model's scores (vocab,) float32 for the token after `ids`."""
    check_length(model, len(ids))
    idx = torch.tensor([list(ids)], dtype=torch.long, device=model.tok_emb.weight.device)  # (1, T)
    with torch.no_grad(), eval_mode(model):
        return model(idx, last_only=True)[0, -1].float()  # (vocab,)


def sampler_steps(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float = 1.0) -> list[tuple[str, torch.Tensor]]:
    """(name, probabilities (vocab,)) after each step of the sampler: the model's own softmax, then
    temperature, top-k and top-p as `sample_next` chains them (a step that is off is left out).

    >>> steps = sampler_steps(torch.tensor([2.0, 1.0, 0.0]), temperature=0.5, top_k=2)
    >>> [(name, [round(p, 3) for p in probs.tolist()]) for name, probs in steps]
    [('model', [0.665, 0.245, 0.09]), ('temperature 0.5', [0.867, 0.117, 0.016]), ('top-k 2', [0.881, 0.119, 0.0])]
    """
    logits = logits.float()[None]  # (1, vocab): the sampler's functions take a batch
    steps = [("model", torch.softmax(logits, dim=-1)[0])]
    if temperature == 0:  # greedy: sample_next takes the argmax and ignores top-k and top-p
        greedy = torch.zeros_like(logits[0])
        greedy[torch.argmax(logits[0])] = 1.0
        return steps + [("temperature 0 (greedy)", greedy)]
    if temperature != 1.0:
        logits = logits / temperature
        steps.append((f"temperature {temperature:g}", torch.softmax(logits, dim=-1)[0]))
    if top_k is not None and top_k < logits.shape[-1]:
        logits = top_k_filter(logits, top_k)
        steps.append((f"top-k {top_k}", torch.softmax(logits, dim=-1)[0]))
    if top_p < 1.0:
        logits = top_p_filter(logits, top_p)
        steps.append((f"top-p {top_p:g}", torch.softmax(logits, dim=-1)[0]))
    return steps


def top_tokens(probs: torch.Tensor, n: int) -> list[int]:
    """The ids of the n most likely tokens, most likely first."""
    return torch.topk(probs, min(n, probs.shape[-1])).indices.tolist()


def table(steps: list[tuple[str, torch.Tensor]], ids: Sequence[int], pieces: Sequence[str]) -> list[str]:
    """Lines of a table: a row per token id (its text, then its probability after each step), and a last
    row with how many tokens each step keeps (probability above zero)."""
    names = [name for name, _ in steps]
    widths = [max(len(n), 7) for n in names]
    head = f"{'#':>3}  {'token':<16}{'id':>7}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, widths))
    lines = [head]
    for rank, (i, piece) in enumerate(zip(ids, pieces), start=1):
        cells = "  ".join(f"{float(p[i]):>{w}.4f}" for (_, p), w in zip(steps, widths))
        lines.append(f"{rank:>3}  {label(piece, 16):<16}{i:>7}  {cells}")
    kept = "  ".join(f"{int((p > 0).sum()):>{w},}" for (_, p), w in zip(steps, widths))
    lines.append(f"{'':>3}  {'tokens kept':<16}{'':>7}  {kept}")
    return lines


def plot_next_token(steps: list[tuple[str, torch.Tensor]], ids: Sequence[int], pieces: Sequence[str],
                    title: str = "") -> Any:
    """One bar chart per step, side by side, of the probabilities of tokens `ids` (labelled `pieces`).
    Returns the figure."""
    plt = pyplot()
    n = len(ids)
    fig, axes = plt.subplots(1, len(steps), figsize=(0.35 * n * len(steps) + 1.5, 3.4), sharey=True,
                             squeeze=False)
    for ax, (name, probs) in zip(axes[0], steps):
        ax.bar(range(n), [float(probs[i]) for i in ids], color="tab:blue")
        ax.set_xticks(range(n), [label(p, 10) for p in pieces], rotation=90, fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(bottom=0)  # the panels share one scale: the last step's tallest bar sets it
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("probability")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
