"""Integrated Gradients (Sundararajan et al. 2017), batched over the path from a baseline to the images."""
from __future__ import annotations

from typing import Optional

import jax.numpy as jnp

from cnn_jax.interpret.core import Array, LogitsFn, check_inputs, input_gradient, map_over


def integrated_gradients(f: LogitsFn, images: Array, targets: Array, *, baseline=None, steps: int = 50,
                         batch_size: Optional[int] = None) -> Array:
    """``(images - baseline)`` times the mean gradient at ``steps`` points evenly spaced on the straight path from
    ``baseline`` to ``images``, both ends included (PAIR-code ``saliency``'s Riemann sum, so the two agree step for
    step). The maps sum to about ``f(images) - f(baseline)`` at the targets (completeness), closer with more steps.

    ``baseline``: None for black (zeros), or anything broadcastable to the images (a gray level, one image, one
    image per input). ``batch_size`` path points run at a time, each on the whole batch (None: all of them).
    """
    targets = check_inputs(images, targets, "integrated_gradients")
    if steps < 2:
        raise ValueError(f"integrated_gradients needs at least 2 steps (the path's two ends), got {steps}")
    if baseline is None:
        baseline = jnp.zeros_like(images)
    baseline = jnp.asarray(baseline, images.dtype)
    try:
        baseline = jnp.broadcast_to(baseline, images.shape)
    except ValueError:
        raise ValueError(f"a baseline of shape {baseline.shape} does not broadcast to the images' {images.shape}; "
                         "give a scalar, one (H, W, C) image or one per input") from None
    difference = images - baseline
    alphas = jnp.linspace(0.0, 1.0, steps, dtype=images.dtype)
    gradients = map_over(lambda alpha: input_gradient(f, baseline + alpha * difference, targets), alphas, batch_size)
    return gradients.mean(axis=0) * difference
