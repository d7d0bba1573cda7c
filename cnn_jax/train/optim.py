"""Optimizers and learning-rate schedules from a TrainConfig (optax).

Weight decay touches only the parameters named "kernel" (conv and dense weights), never biases
or normalization scales and offsets: decaying those shrinks what BatchNorm re-normalizes anyway
and only hurts. adamw decays decoupled from the gradient (Loshchilov & Hutter); sgd, nesterov and
adam add the L2 gradient `weight_decay * kernel` before the update, as the classic recipes do.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import optax

from cnn_jax.train.config import TrainConfig


def make_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate as a function of the step, over `config.epochs` epochs."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch}: the training split has fewer "
                         "examples than one batch; lower the batch size or use more examples.")
    total = config.epochs * steps_per_epoch
    warmup = max(1, round(config.warmup_epochs * steps_per_epoch))
    lr = config.learning_rate
    if config.schedule == "constant":
        return optax.constant_schedule(lr)
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, total)
    if config.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total)
    if config.schedule == "onecycle":
        return optax.cosine_onecycle_schedule(total, lr, pct_start=warmup / total)
    raise ValueError(f"unknown schedule {config.schedule!r}")  # TrainConfig rules this out.


def kernel_mask(params):
    """True for the leaves that weight decay applies to: those named "kernel"."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optax optimizer of `config`, with its schedule and weight decay."""
    lr = make_schedule(config, steps_per_epoch)
    if config.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=config.weight_decay, mask=kernel_mask)
    if config.optimizer == "adam":
        update = optax.adam(lr)
    else:
        update = optax.sgd(lr, momentum=config.momentum or None,
                           nesterov=config.optimizer == "nesterov")
    if config.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.weight_decay, mask=kernel_mask),
                           update)
    return update


def make_grouped_optimizer(config: TrainConfig, steps_per_epoch: int, labels: Callable,
                           learning_rates: Mapping[str, float]) -> optax.GradientTransformation:
    """`config`'s optimizer per group of parameters, each at its own peak learning rate under
    the same schedule (e.g. a new head fast, a pretrained backbone slowly).

    `labels(params)` gives each leaf or subtree its group (`optax.multi_transform`). A group at
    rate 0 is frozen: zero updates (`optax.set_to_zero`), no optimizer state, no weight decay.
    """
    return optax.multi_transform(
        {group: optax.set_to_zero() if rate == 0 else
         make_optimizer(dataclasses.replace(config, learning_rate=rate), steps_per_epoch)
         for group, rate in learning_rates.items()}, labels)
