"""Pictures of what a model does, computed from the real model (layer 3: reads models, never trains them).

- `tokens`: where each tokenizer cuts a text, its ids in colour on a terminal, bytes per token.
- `attention`: the attention weights of every layer and head, captured from a forward pass without
  changing the model, and a heatmap grid of them.
- `next_token`: the next-token distribution and how temperature, top-k and top-p reshape it, with
  the sampler's own functions (`generate.sampling`), as a table and bar charts.
- `embeddings`: token embeddings projected to two dimensions by PCA, as a scatter plot.
- `figures`: the matplotlib setup they share (off-screen backend, one token-label rule).

Each module computes numbers (tested against references) and draws them in a function that returns
the matplotlib figure, so a caller (the `scratchllm inspect` command, a walkthrough) saves it with
`files.save_figure`. Not here: loading models (`checkpoint`, `interop.load`), the loss plot of a run
(`train.logging.plot_losses`).
"""
