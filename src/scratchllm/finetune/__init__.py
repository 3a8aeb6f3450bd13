"""Finetuning: take a trained model and make it do a task (the book's chapters 6 and 7, appendix E).

Each method is a loss plus batches for the one training loop (`train.loop.train`), planned by a
module here and run by one job (`finetune.job.finetune`):

- `classify`: a classification head on the last (or mean) hidden state; metrics, active learning.
- `instruct`: next-token loss on Alpaca-format prompts and responses, or chat messages.
- `dpo`: direct preference optimisation against a frozen reference model.
- `batches`: shuffled, length-grouped, resumable epochs of examples.
- LoRA's layer is `model.lora` (below the checkpoint reader, which rebuilds adapters); the job adds it.
"""
