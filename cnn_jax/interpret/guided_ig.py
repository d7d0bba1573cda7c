"""Guided Integrated Gradients (Kapishnikov et al. 2021): integrated gradients along a path chosen by the model,
moving first the features whose gradient is smallest, so the path avoids the regions where the gradient is noisy.

Follows PAIR-code ``saliency``'s ``GuidedIG`` (``guided_ig_impl``) step for step. At step k of ``steps`` the path
must have covered k / steps of the L1 distance from the baseline to the image; each feature stays within
``max_dist`` (a fraction of its own baseline-to-image distance) of the straight-line path. To get there, the
``fraction`` of features with the smallest absolute gradient moves towards the image, repeatedly, until the step's
L1 target is met; the attribution adds each move times the gradient at the step's start. Like integrated
gradients, the maps sum to about ``f(images) - f(baseline)`` at the targets.

Images are handled together, one gradient of the whole batch per step; each image's inner loop runs until its own
target is met (a ``while_loop`` under ``vmap``). PAIR computes in float64, this in the images' float32, so its
closeness test is relative to float32's precision.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cnn_jax.interpret.core import Array, LogitsFn, check_inputs, input_gradient

_CLOSE = 1e-6  # |L1 - target| within this fraction of the total L1 distance counts as reached (PAIR: 1e-9, float64)


def _advance(x, gradient, image, baseline, alpha, max_dist: float, fraction: float, l1_total):
    """One Guided IG step of one image (all arrays flat): the new point on the path."""
    alpha_min, alpha_max = jnp.maximum(alpha - max_dist, 0.0), jnp.minimum(alpha + max_dist, 1.0)
    difference = image - baseline
    x_min, x_max = baseline + difference * alpha_min, baseline + difference * alpha_max
    l1_target = l1_total * (1 - alpha)
    moving = difference != 0

    def unfinished(state):
        _, gamma, reached, count = state
        return (gamma > 1) & ~reached & (count <= x.size)  # each pass parks one feature or more at x_max

    def move(state):
        x, _, _, count = state
        x_alpha = jnp.where(moving, (x - baseline) / jnp.where(moving, difference, 1), alpha_max)
        x = jnp.where(x_alpha < alpha_min, x_min, x)  # features left behind catch up with the path
        l1_current = jnp.abs(x - image).sum()
        reached = jnp.abs(l1_current - l1_target) <= _CLOSE * l1_total
        size = jnp.where(x == x_max, jnp.inf, jnp.abs(gradient))  # features at x_max wait for the next step
        selected = (size <= jnp.quantile(size, fraction, method="lower")) & (size != jnp.inf)
        l1_selected = (jnp.abs(x - x_max) * selected).sum()
        gamma = jnp.where(l1_selected > 0, (l1_current - l1_target) / jnp.where(l1_selected > 0, l1_selected, 1),
                          jnp.inf)
        target = jnp.where(gamma > 1, x_max, x + (x_max - x) * gamma)
        x = jnp.where(selected & ~reached, target, x)
        return x, gamma, reached, count + 1

    x, *_ = jax.lax.while_loop(unfinished, move, (x, jnp.asarray(jnp.inf, x.dtype), jnp.asarray(False),
                                                  jnp.asarray(0)))
    return x


def guided_ig(f: LogitsFn, images: Array, targets: Array, *, baseline=None, steps: int = 200,
              fraction: float = 0.25, max_dist: float = 0.02) -> Array:
    """Guided IG maps shaped like ``images``, PAIR's defaults. ``baseline``: None for black, or anything that
    broadcasts to the images. ``max_dist=0`` follows the straight line (integrated gradients with a left Riemann
    sum); 1 lets the path go anywhere in the box between baseline and image."""
    targets = check_inputs(images, targets, "guided_ig")
    if steps < 1 or not 0 < fraction <= 1 or not 0 <= max_dist <= 1:
        raise ValueError(f"guided_ig needs steps >= 1, 0 < fraction <= 1 and 0 <= max_dist <= 1, got steps={steps}, "
                         f"fraction={fraction}, max_dist={max_dist}")
    baseline = jnp.zeros_like(images) if baseline is None else jnp.asarray(baseline, images.dtype)
    try:
        baseline = jnp.broadcast_to(baseline, images.shape)
    except ValueError:
        raise ValueError(f"a baseline of shape {baseline.shape} does not broadcast to the images' {images.shape}; "
                         "give a scalar, one (H, W, C) image or one per input") from None
    count = len(images)
    flat_images, flat_baseline = images.reshape(count, -1), baseline.reshape(count, -1)
    l1_total = jnp.abs(flat_images - flat_baseline).sum(axis=1)
    advance = jax.vmap(_advance, in_axes=(0, 0, 0, 0, None, None, None, 0))

    def step(k, carry):
        x, attribution = carry
        gradient = input_gradient(f, x.reshape(images.shape), targets).reshape(count, -1)
        alpha = (k + 1.0) / steps
        moved = advance(x, gradient, flat_images, flat_baseline, alpha, max_dist, fraction, l1_total)
        return moved, attribution + (moved - x) * gradient

    _, attribution = jax.lax.fori_loop(0, steps, step, (flat_baseline, jnp.zeros_like(flat_images)))
    return attribution.reshape(images.shape)
