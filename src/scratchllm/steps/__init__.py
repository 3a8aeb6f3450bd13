"""The book's step-by-step models, as real modules (Raschka 2024, chapters 3 and 4).

- `steps.attention` (ch. 3): attention without weights, SelfAttentionV1/V2, CausalAttention,
  MultiHeadAttentionWrapper, MultiHeadAttention.
- `steps.blocks` (ch. 4): LayerNorm, GELU, FeedForward, shortcut connections
  (ExampleDeepNeuralNetwork), TransformerBlock.
- `steps.gpt` (ch. 4): GPTModel built from those blocks (its greedy loop, generate_text_simple, is
  `generate.simple`'s).

These are for reading and for pictures (attention modules keep their weights when asked:
`keep_attn_weights=True` fills `last_attn_weights`). They are tested equal to the production model
(`scratchllm.model`) and to the book's own code, with the same weights. They build on the one copy
of the math in `scratchllm.model.functional` and nothing in the package imports them.
"""
