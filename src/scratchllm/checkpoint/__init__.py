"""Checkpoints on disk, below training: the folder format, its integrity checks, finding and loading a model.

A run folder (`runs/<name>/`) holds:

    checkpoints/step-0000500/   model.safetensors          weights (safetensors: loading runs no code)
                                config.json                the ModelConfig, enough to rebuild the model
                                tokenizer.scratchllm.json  the tokenizer
                                optimizer.safetensors      AdamW moments (training's, `train.checkpoint`)
                                state.json                 step, tokens seen, RNG states, data position,
                                                           run config, and the size and sha256 of every
                                                           file above
    latest                      name of the newest good checkpoint (one line)
    best                        name of the checkpoint with the lowest validation loss

`runs/latest` names the most recent run, so `scratchllm generate` finds it without flags.

- `folder`: one checkpoint folder: written atomically, read with every file and field checked.
- `pointers`: a run's checkpoints and its `latest`/`best` pointers (names inside the run, never paths).
- `load`: finding and loading a model for other commands (`load_model`, `latest_run`), and the one
  fall-back-past-damaged-checkpoints rule.

Generation, evaluation, serving and interop read checkpoints from here without importing training.
Not here: optimizer and RNG state, which checkpoints to keep, resume (`train.checkpoint`).
"""

from scratchllm.checkpoint.folder import (
    CONFIG_FILE,
    MODEL_FILE,
    STATE_FILE,
    CheckpointError,
    CheckpointMismatch,
    check_tensors,
    load_weights,
    read_state,
    save_checkpoint,
    step_name,
    unwrap,
    verify_checkpoint,
)
from scratchllm.checkpoint.load import find_checkpoints, first_good, latest_run, load_model, resolve_checkpoint
from scratchllm.checkpoint.pointers import (
    BEST,
    CHECKPOINTS,
    LATEST,
    candidates,
    checkpoints,
    read_pointer,
    write_pointer,
)

__all__ = ["BEST", "CHECKPOINTS", "CONFIG_FILE", "LATEST", "MODEL_FILE", "STATE_FILE", "CheckpointError",
           "CheckpointMismatch", "candidates", "check_tensors", "checkpoints", "find_checkpoints", "first_good",
           "latest_run", "load_model", "load_weights", "read_pointer", "read_state", "resolve_checkpoint",
           "save_checkpoint", "step_name", "unwrap", "verify_checkpoint", "write_pointer"]
