"""Vanilla gradient saliency (Simonyan et al. 2014) and gradient x input (Shrikumar et al. 2016)."""
from __future__ import annotations

from cnn_jax.interpret.core import Array, LogitsFn, check_inputs, input_gradient


def saliency(f: LogitsFn, images: Array, targets: Array) -> Array:
    """d f(images)[i, targets[i]] / d images[i]: how much each pixel value moves the target logit, locally.

    Returns maps shaped like ``images`` (signed; plots show their absolute value summed over channels).
    """
    targets = check_inputs(images, targets, "saliency")
    return input_gradient(f, images, targets)


def gradient_x_input(f: LogitsFn, images: Array, targets: Array) -> Array:
    """The gradient times the image: a first-order estimate of each pixel's contribution relative to black."""
    return images * saliency(f, images, targets)
