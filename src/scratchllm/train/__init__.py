"""Training: the one loop (loop), optimizer and schedules (optim), checkpoints (checkpoint), the run
folder (run), metrics/plots/model card (logging), and the pretraining main job (pretrain).

`train(model, batches, loss_fn, config)` is the entry point every kind of training shares;
`latest_run()` and `load_model(folder)` give other commands a trained model.
"""

from scratchllm.train.checkpoint import CheckpointError, Checkpoints, latest_run, load_model
from scratchllm.train.loop import TrainingDiverged, TrainState, train
from scratchllm.train.losses import lm_loss
from scratchllm.train.optim import build_optimizer, lr_at, param_groups
from scratchllm.train.run import Run

__all__ = ["CheckpointError", "Checkpoints", "Run", "TrainState", "TrainingDiverged", "build_optimizer",
           "latest_run", "lm_loss", "load_model", "lr_at", "param_groups", "train"]
