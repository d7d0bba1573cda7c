"""The training configuration: one frozen dataclass, validated when built."""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Literal

from cnn_jax.settings import bookkeeping

Optimizer = Literal["sgd", "nesterov", "adam", "adamw"]
Schedule = Literal["constant", "cosine", "warmup_cosine", "onecycle"]
OPTIMIZERS = typing.get_args(Optimizer)
SCHEDULES = typing.get_args(Schedule)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train: optimizer, schedule, regularization, and bookkeeping.

    The data (batch size, augmentation, splits) and the model (including its compute dtype for
    half precision) are chosen by the caller; this config holds only what the engine decides.

    Attributes:
      epochs: passes over the training split.
      learning_rate: peak learning rate of the schedule.
      optimizer: "sgd" and "nesterov" (both with `momentum`), "adam", or "adamw".
      momentum: momentum of sgd/nesterov; 0 gives plain SGD.
      schedule: "constant", "cosine" (decay to 0), "warmup_cosine" (linear warmup over
        `warmup_epochs`, then cosine to 0) or "onecycle" (cosine rise over `warmup_epochs`,
        then cosine fall, as PyTorch's OneCycleLR).
      warmup_epochs: length of the rising part of "warmup_cosine" and "onecycle"; may be
        fractional.
      weight_decay: decoupled for adamw, an L2 term on the gradient otherwise; kernels only.
      label_smoothing: mass spread uniformly over all classes in the training targets.
      seed: seeds parameter init, dropout and augmentation (the data order has its own seed).
      log_every_steps: how often training metrics are read from the device and written.
      checkpoint_every_steps: save a checkpoint every this many steps, besides at the end of
        every epoch; 0 saves at epoch ends only.
      keep_checkpoints: how many of the latest checkpoints to keep for resuming.
      eval_every_epochs: evaluate (and pick the best validation state) at the end of every
        this many epochs and of the last one; checkpoints are saved at every epoch end anyway.
        Fewer evaluations leave more of a time budget to training.
      progress_bar: draw a one-line progress bar on stderr.
      tensorboard: also write the metrics as TensorBoard scalars (`cnn_jax.train.events`).
      test_time_flip: evaluate on the mean logits of each image and its left-right mirror
        (for data whose classes are mirror-symmetric, as CIFAR-10's are).
      class_weights: weight each example's loss by the inverse frequency of its class in the
        train split (for imbalanced data).
      test_time_shift: also evaluate each image translated this many pixels up-left and
        down-right (reflect padding), weighting their logits 1/4 each against 1/2 for the
        untranslated ones, as airbench94's test-time augmentation does; 0 for none. Each
        translated view is flip-averaged too under `test_time_flip`.
      ema_decay: keep an exponential moving average of the weights (params and BatchNorm
        statistics), updated after every optimizer update with this decay, and evaluate, pick
        the best checkpoint and export with it; 0 for none, e.g. 0.999.
      lookahead_steps: wrap the optimizer in lookahead, synchronizing its slow weights every
        this many updates, and evaluate on the slow weights; 0 for none, e.g. 5.
      lookahead_alpha: the fraction of the way lookahead's slow weights move towards the fast
        ones at each synchronization, in (0, 1]; used when `lookahead_steps` > 0.
      mixup_alpha: mix each training batch with mixup, its weight drawn from Beta(alpha, alpha)
        once per batch, and train on the mixed soft targets; 0 for none, e.g. 0.2.
      cutmix_alpha: paste a box of another image into each training image (CutMix), its area
        drawn from Beta(alpha, alpha), with targets weighted by area; 0 for none, e.g. 1.0.
      mixup_switch_prob: when both `mixup_alpha` and `cutmix_alpha` are positive, the
        probability that a batch gets CutMix instead of mixup.
      grad_clip_norm: scale the gradient down to this global norm when it is larger, before the
        optimizer (and its L2 weight decay) sees it; 0 for no clipping, e.g. 1.0.
      accumulate_steps: average the gradients of this many batches into one optimizer update
        (optax.MultiSteps), for an effective batch this many times larger; the schedule counts
        updates. 1 for none.
      steps_per_execution: run this many train steps in one compiled call (a `lax.scan` over a
        stack of batches, as Keras' `steps_per_execution`), so the host dispatches, transfers and
        logs once per call; for small models whose steps take a few milliseconds. The steps and
        their randomness are those of one call per step, the result too up to float rounding (XLA
        may fuse a step differently inside the loop); checkpoints, logs and stop signals land on call
        boundaries, which the loop aligns with epoch ends and `checkpoint_every_steps`. 1 for one
        call per step.
    """

    epochs: int = 10
    learning_rate: float = 0.1
    optimizer: Optimizer = "nesterov"
    momentum: float = 0.9
    schedule: Schedule = "cosine"
    warmup_epochs: float = 0.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    seed: int = 0
    log_every_steps: int = bookkeeping(100)
    checkpoint_every_steps: int = bookkeeping(0)
    keep_checkpoints: int = bookkeeping(2)
    eval_every_epochs: int = bookkeeping(1)
    progress_bar: bool = bookkeeping(True)
    tensorboard: bool = bookkeeping(True)
    test_time_flip: bool = False
    class_weights: bool = False
    test_time_shift: int = 0
    ema_decay: float = 0.0
    lookahead_steps: int = 0
    lookahead_alpha: float = 0.5
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_switch_prob: float = 0.5
    grad_clip_norm: float = 0.0
    accumulate_steps: int = 1
    steps_per_execution: int = 1

    def __post_init__(self):
        _require(self.epochs >= 1, "epochs", self.epochs, "use at least 1 epoch")
        _require(math.isfinite(self.learning_rate) and self.learning_rate > 0,
                 "learning_rate", self.learning_rate,
                 "use a positive learning rate such as 0.1 (sgd) or 1e-3 (adam)")
        _require(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer,
                 f"choose one of {', '.join(OPTIMIZERS)}")
        _require(0 <= self.momentum < 1, "momentum", self.momentum,
                 "use a value in [0, 1), e.g. 0.9")
        _require(self.schedule in SCHEDULES, "schedule", self.schedule,
                 f"choose one of {', '.join(SCHEDULES)}")
        _require(0 <= self.warmup_epochs < self.epochs, "warmup_epochs", self.warmup_epochs,
                 f"use a value in [0, epochs={self.epochs})")
        if self.schedule in ("warmup_cosine", "onecycle"):
            _require(self.warmup_epochs > 0, "warmup_epochs", self.warmup_epochs,
                     f"schedule={self.schedule} needs warmup_epochs > 0 (or use schedule=cosine)")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay,
                 "use 0 for none or a small positive value such as 5e-4")
        _require(0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing,
                 "use a value in [0, 1), e.g. 0.1")
        _require(self.log_every_steps >= 1, "log_every_steps", self.log_every_steps,
                 "use at least 1")
        _require(self.checkpoint_every_steps >= 0, "checkpoint_every_steps",
                 self.checkpoint_every_steps, "use 0 (epoch ends only) or a positive step count")
        _require(self.eval_every_epochs >= 1, "eval_every_epochs", self.eval_every_epochs,
                 "use 1 to evaluate after every epoch, or more to evaluate less often")
        _require(self.test_time_shift >= 0, "test_time_shift", self.test_time_shift,
                 "use 0 for no translated views or a few pixels, e.g. 1")
        _require(self.keep_checkpoints >= 1, "keep_checkpoints", self.keep_checkpoints,
                 "keep at least 1 checkpoint so that runs can resume")
        _require(0 <= self.ema_decay < 1, "ema_decay", self.ema_decay,
                 "use 0 for no EMA or a decay in (0, 1) close to 1, e.g. 0.999")
        _require(self.lookahead_steps >= 0, "lookahead_steps", self.lookahead_steps,
                 "use 0 for no lookahead or a positive number of updates, e.g. 5")
        _require(0 < self.lookahead_alpha <= 1, "lookahead_alpha", self.lookahead_alpha,
                 "use a value in (0, 1], e.g. 0.5")
        _require(self.mixup_alpha >= 0, "mixup_alpha", self.mixup_alpha,
                 "use 0 for no mixup or a positive Beta parameter, e.g. 0.2")
        _require(self.cutmix_alpha >= 0, "cutmix_alpha", self.cutmix_alpha,
                 "use 0 for no CutMix or a positive Beta parameter, e.g. 1.0")
        _require(0 <= self.mixup_switch_prob <= 1, "mixup_switch_prob", self.mixup_switch_prob,
                 "use a probability in [0, 1], e.g. 0.5")
        _require(math.isfinite(self.grad_clip_norm) and self.grad_clip_norm >= 0,
                 "grad_clip_norm", self.grad_clip_norm,
                 "use 0 for no clipping or a positive global norm, e.g. 1.0")
        _require(self.accumulate_steps >= 1, "accumulate_steps", self.accumulate_steps,
                 "use 1 for no accumulation or the number of batches per update, e.g. 4")
        _require(self.steps_per_execution >= 1, "steps_per_execution", self.steps_per_execution,
                 "use 1 for one compiled call per step or more steps per call, e.g. 25")


def _require(ok: bool, field: str, value, fix: str) -> None:
    if not ok:
        raise ValueError(f"TrainConfig.{field}={value!r} is invalid: {fix}.")
