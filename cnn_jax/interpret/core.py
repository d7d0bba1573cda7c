"""What every attribution method shares: the checks of its inputs, the score it differentiates, and batching.

The contract (as PAIR-code ``saliency`` and Captum frame it): ``f`` maps a batch of images (N, H, W, C) to logits
(N, K); ``targets`` names one class per image; a method explains ``f(images)[i, targets[i]]`` for every i at once.
Images of a batch do not interact in an inference-mode network, so the gradient of the sum of the selected logits
is every image's own gradient.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from cnn_jax import ops
from cnn_jax.ops.checks import check_images

Array = jnp.ndarray
LogitsFn = Callable[[Array], Array]
SEPARATE = "separate"  # the kernel mode (``ops.kernels``) in which every module computes its own output


def check_inputs(images: Array, targets, method: str) -> Array:
    """Raises for inputs no method can explain; returns ``targets`` as an int32 array of shape (N,)."""
    check_images(images, method, min_size=1)
    targets = jnp.asarray(targets)
    if targets.shape != images.shape[:1] or not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(f"{method} needs one integer class per image: targets of shape ({images.shape[0]},), got "
                         f"{targets.dtype} of shape {targets.shape}; for one class t use jnp.full(n, t)")
    return targets.astype(jnp.int32)


def check_targets(targets, num_classes: int) -> None:
    """Raises when a known (not traced) target class is outside ``[0, num_classes)``."""
    if isinstance(targets, jax.core.Tracer):
        return
    values = np.asarray(targets)
    outside = values[(values < 0) | (values >= num_classes)]
    if outside.size:
        raise ValueError(f"target class {int(outside[0])} is out of range: the model has {num_classes} classes "
                         f"(0 to {num_classes - 1})")


def selected_logits(logits: Array, targets: Array) -> Array:
    """``logits[i, targets[i]]`` for every i: (N, K) -> (N,). A target out of range raises where it is known and
    gives NaN where it is traced (inside jit), never another class's logit."""
    if logits.ndim != 2 or logits.shape[0] != targets.shape[0]:
        raise ValueError(f"the model must map N images to logits of shape (N, K); got {logits.shape} for "
                         f"{targets.shape[0]} images")
    classes = logits.shape[1]
    check_targets(targets, classes)
    picked = jnp.take_along_axis(logits, jnp.clip(targets, 0, classes - 1)[:, None], axis=1)[:, 0]
    poison = jnp.where((targets >= 0) & (targets < classes), 0.0, jnp.nan)  # NaN values and gradients outside
    return picked + poison * logits.sum(axis=1)


def input_gradient(f: LogitsFn, images: Array, targets: Array) -> Array:
    """d f(images)[i, targets[i]] / d images[i], for every image at once."""
    return jax.grad(lambda x: selected_logits(f(x), targets).sum())(images)


def map_over(fn: Callable, xs: Array, batch_size: Optional[int]) -> Array:
    """``fn`` applied to every ``xs[k]``, stacked: all at once (``vmap``) when ``batch_size`` is None, else
    ``batch_size`` at a time (``lax.map``), trading speed for memory."""
    if batch_size is None:
        return jax.vmap(fn)(xs)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None (all at once), got {batch_size}")
    return jax.lax.map(fn, xs, batch_size=batch_size)


def trace(f: Callable, *args) -> jcore.ClosedJaxpr:
    """``jax.make_jaxpr(f)(*args)`` in the kernel mode that shows each module's output and every ReLU call, for
    the methods that rerun a model with changes (``rewrite.evaluate``)."""
    with ops.kernels(SEPARATE):
        return jax.make_jaxpr(f)(*args)
