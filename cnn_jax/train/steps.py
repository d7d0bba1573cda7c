"""The pure steps: train `(state, batch) -> (state, metrics)` and eval `(state, batch) -> metrics`.

Both return device arrays only; nothing here waits for the device, so a loop can dispatch many
steps ahead and read the metrics when it logs.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnn_jax.train.mixing import mix_batch, mix_targets
from cnn_jax.train.state import TrainState

Augment = Callable[[jax.Array, jax.Array], jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy against (optionally smoothed) one-hot targets."""
    return soft_cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array,
                       label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy against (optionally smoothed) soft targets."""
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def balanced_class_weights(counts) -> np.ndarray:
    """Inverse class frequency, `total / (classes present * count)` as scikit-learn's "balanced"
    (1 for balanced data), float32; 0 for a class without examples."""
    counts = np.asarray(counts, np.float64)
    with np.errstate(divide="ignore"):
        weights = np.where(counts > 0, counts.sum() / (np.count_nonzero(counts) * counts), 0.0)
    return weights.astype(np.float32)


def make_train_step(augment: Optional[Augment] = None, label_smoothing: float = 0.0,
                    class_weights: Optional[np.ndarray] = None, *, mixup_alpha: float = 0.0,
                    cutmix_alpha: float = 0.0, mixup_switch_prob: float = 0.5):
    """A train step with the augmentation, label smoothing and mixing closed over (jit it once).

    `class_weights` (one per class, e.g. `balanced_class_weights`) weight each example's loss by
    its label's weight; the batch loss is then `sum(w * loss) / sum(w)`, as PyTorch's weighted
    cross-entropy reduces it.

    `mixup_alpha` and `cutmix_alpha` (0: off) mix each augmented batch with `mixing.mix_batch`
    (CutMix with probability `mixup_switch_prob` when both are on); the loss is then taken
    against the mixed soft targets, an example's class weight is the mix of its two labels'
    weights, and the accuracy metric counts its own (unmixed) label.

    The step's key is the state's rng folded with the step number, split into an augmentation
    key and a dropout key (the mixing key is split from the augmentation key), so a resumed run
    draws the same randomness as an uninterrupted one.
    Metrics: mean loss and accuracy over the batch, the global norm of the batch's gradient
    (before any clipping), and `finite`, true while loss and gradients are free of NaN/Inf (read
    by the loop at log time).
    """
    mixing = mixup_alpha > 0 or cutmix_alpha > 0

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        augment_key, dropout_key = jax.random.split(state.step_key())
        images, labels = batch["image"], batch["label"]
        if mixing:
            augment_key, mix_key = jax.random.split(augment_key)
        if augment is not None:
            images = augment(augment_key, images)
        if mixing:
            images, lam = mix_batch(mix_key, images, mixup_alpha, cutmix_alpha, mixup_switch_prob)

        def loss_fn(params):
            variables = {**state.variables, "params": params}
            logits, updates = state.apply_fn(variables, images, train=True,
                                             mutable=["batch_stats"],
                                             rngs={"dropout": dropout_key})
            if mixing:
                targets = mix_targets(jax.nn.one_hot(labels, logits.shape[-1]), lam)
                losses = soft_cross_entropy(logits, targets, label_smoothing)
            else:
                losses = cross_entropy(logits, labels, label_smoothing)
            if class_weights is None:
                loss = losses.mean()
            else:
                weights = jnp.asarray(class_weights, jnp.float32)
                weights = targets @ weights if mixing else weights[labels]
                loss = jnp.sum(weights * losses) / jnp.sum(weights)
            return loss, (logits, updates.get("batch_stats", state.batch_stats))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        grad_norm = optax.global_norm(grads)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
            "grad_norm": grad_norm,
            "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm),
        }
        return state.apply_gradients(grads, batch_stats), metrics

    return train_step


def eval_step(state: TrainState, batch: dict, test_time_flip: bool = False,
              test_time_shift: int = 0) -> dict:
    """Sums over the real (mask == 1) examples of a batch, plus every example's prediction.

    Returns `correct` and `loss` (sums), `count` (real examples) and `predictions` (argmax of
    the logits, for confusion matrices; padded rows included, drop them with the mask).
    With `test_time_flip` the logits are the mean of those of each image and its mirror image;
    with `test_time_shift` (pixels) half of them come from the image translated that far
    up-left and down-right (TrainConfig.test_time_shift). The model runs on
    `state.eval_variables`: the EMA or lookahead's slow weights when those are on.
    """
    variables = state.eval_variables

    def view_logits(images):
        logits = state.apply_fn(variables, images, train=False)
        if test_time_flip:
            logits = (logits + state.apply_fn(variables, images[:, :, ::-1], train=False)) / 2
        return logits

    images = batch["image"]
    logits = view_logits(images)
    if test_time_shift:
        s, (height, width) = test_time_shift, images.shape[1:3]
        padded = jnp.pad(images, ((0, 0), (s, s), (s, s), (0, 0)), mode="reflect")
        translated = view_logits(padded[:, :height, :width]) + view_logits(padded[:, 2 * s:, 2 * s:])
        logits = logits / 2 + translated / 4
    predictions = jnp.argmax(logits, -1).astype(jnp.int32)
    mask = batch["mask"]
    return {
        "correct": jnp.sum((predictions == batch["label"]) * mask),
        "loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
        "count": jnp.sum(mask),
        "predictions": predictions,
    }
