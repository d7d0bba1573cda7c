"""The training engine: config, train state, steps, sharding, checkpoints, metrics and the loop.

`train_and_evaluate(model, dataset, TrainConfig(...), workdir)` is the entry point: it trains,
checkpoints and logs metrics, and returns an `Outcome` (state, history, test evaluation, summary)
for its caller to report; `workdir.claim` locks a workdir and checks its recorded settings. The
parts are public for tests, scripts and custom loops.
"""
from cnn_jax.train.checkpoint import Checkpointer, CheckpointError, CheckpointMismatchError
from cnn_jax.train.config import OPTIMIZERS, SCHEDULES, TrainConfig
from cnn_jax.train.finetune import FineTuning, fine_tuning, network_stages
from cnn_jax.train.loop import Outcome, Preempted, TrainingDiverged, train_and_evaluate
from cnn_jax.train.optim import make_grouped_optimizer, make_optimizer, make_schedule
from cnn_jax.train.sharding import batch_sharding, check_batch_size, make_mesh, maybe_initialize_distributed, replicated
from cnn_jax.train.state import TrainState, create_train_state
from cnn_jax.train.steps import balanced_class_weights, cross_entropy, eval_step, make_train_step

__all__ = [
    "CheckpointError", "CheckpointMismatchError", "Checkpointer", "Outcome", "Preempted", "FineTuning", "OPTIMIZERS",
    "SCHEDULES",
    "TrainConfig", "TrainState", "TrainingDiverged", "balanced_class_weights", "batch_sharding",
    "check_batch_size", "create_train_state", "cross_entropy", "eval_step", "fine_tuning",
    "make_grouped_optimizer", "make_mesh", "make_optimizer", "make_schedule", "make_train_step",
    "maybe_initialize_distributed", "network_stages", "replicated", "train_and_evaluate",
]
