"""Training: the one loop (loop), optimizer and schedules (optim), optimizer/RNG state, retention and
resume on top of the checkpoint format (checkpoint), the run folder (run) and its lock (lock),
metrics/plots/model card (logging), and the pretraining main job (pretrain).

`train(model, batches, loss_fn, config)` is the entry point every kind of training shares. Reading
a trained model is not training's job: other commands use `scratchllm.checkpoint.load_model`.
"""

from scratchllm.train.checkpoint import Checkpoints
from scratchllm.train.lock import RunBusy, RunLock
from scratchllm.train.loop import TrainingDiverged, TrainState, train
from scratchllm.train.losses import lm_loss
from scratchllm.train.optim import build_optimizer, lr_at, param_groups
from scratchllm.train.run import Run

__all__ = ["Checkpoints", "Run", "RunBusy", "RunLock", "TrainState", "TrainingDiverged", "build_optimizer",
           "lm_loss", "lr_at", "param_groups", "train"]
