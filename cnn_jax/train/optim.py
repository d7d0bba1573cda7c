"""Optimizers and learning-rate schedules from a TrainConfig (optax).

Weight decay touches only the parameters named "kernel" (conv and dense weights), never biases
or normalization scales and offsets: decaying those shrinks what BatchNorm re-normalizes anyway
and only hurts. adamw decays decoupled from the gradient (Loshchilov & Hutter); sgd, nesterov and
adam add the L2 gradient `weight_decay * kernel` before the update, as the classic recipes do.

Around the optimizer go the update rules of timm's recipe that a config turns on: gradient
clipping, lookahead and gradient accumulation (`with_update_rules`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import optax

from cnn_jax.train.config import TrainConfig
from cnn_jax.train.lookahead import lookahead


def make_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate as a function of the train step (one batch), over `config.epochs` epochs.

    With `accumulate_steps` k, k train steps make one optimizer update and the optimizer's
    schedule counts updates (`update_schedule`): step s trains at the rate of update s // k.
    """
    schedule = update_schedule(config, steps_per_epoch)
    k = config.accumulate_steps
    return schedule if k == 1 else lambda step: schedule(step // k)


def update_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate as a function of the number of optimizer updates so far: the schedule
    inside the optimizer, over the `epochs * steps_per_epoch // accumulate_steps` updates of the
    run (the same as `make_schedule` without accumulation)."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch}: the training split has fewer "
                         "examples than one batch; lower the batch size or use more examples.")
    k = config.accumulate_steps
    total = config.epochs * steps_per_epoch // k
    if total < 1:
        raise ValueError(f"accumulate_steps={k} exceeds the {config.epochs * steps_per_epoch} "
                         "train steps of the run, which then makes no update; lower it.")
    warmup = max(1, round(config.warmup_epochs * steps_per_epoch / k))
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
    """The optax optimizer of `config`: its schedule and weight decay, wrapped in the gradient
    clipping, lookahead and accumulation that `config` turns on (`with_update_rules`)."""
    return with_update_rules(config, _base_optimizer(config, steps_per_epoch))


def _base_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optimizer with its schedule (counting updates) and weight decay, nothing around it."""
    lr = update_schedule(config, steps_per_epoch)
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


def with_update_rules(config: TrainConfig,
                      tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` with, from the inside out: the gradient clipped to a global norm of
    `grad_clip_norm` (before any L2 weight-decay term is added), lookahead every
    `lookahead_steps` updates, and `optax.MultiSteps` accumulating the mean gradient of
    `accumulate_steps` train steps into one update. Everything inside MultiSteps, the schedule
    and lookahead's count included, sees applied updates only. Settings that are off add no
    state, so `tx` comes back unchanged when all are."""
    if config.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
    if config.lookahead_steps:
        tx = lookahead(tx, config.lookahead_steps, config.lookahead_alpha)
    if config.accumulate_steps > 1:
        tx = optax.MultiSteps(tx, config.accumulate_steps).gradient_transformation()
    return tx


def make_grouped_optimizer(config: TrainConfig, steps_per_epoch: int, labels: Callable,
                           learning_rates: Mapping[str, float]) -> optax.GradientTransformation:
    """`config`'s optimizer per group of parameters, each at its own peak learning rate under
    the same schedule (e.g. a new head fast, a pretrained backbone slowly).

    `labels(params)` gives each leaf or subtree its group (`optax.multi_transform`). A group at
    rate 0 is frozen: zero updates (`optax.set_to_zero`), no optimizer state, no weight decay.
    Clipping, lookahead and accumulation wrap all groups together (clipping by the norm of the
    whole gradient).
    """
    return with_update_rules(config, optax.multi_transform(
        {group: optax.set_to_zero() if rate == 0 else
         _base_optimizer(dataclasses.replace(config, learning_rate=rate), steps_per_epoch)
         for group, rate in learning_rates.items()}, labels))
