"""Blur Integrated Gradients (Xu et al. 2020, "Attribution in Scale and Space"): integrated gradients along the
path from a heavily blurred copy of each image to the image, so no black or gray baseline has to be chosen.

Follows PAIR-code ``saliency``'s ``BlurIG`` step for step: ``steps`` blur widths sigma_i evenly spaced (or their
squares, ``sqrt``) from 0 to ``max_sigma``; at each, the gradient of the target logit at the image blurred by
sigma_i times the image's derivative in sigma (a forward difference of width ``grad_step``) times the step's width,
summed and negated. The maps sum to about ``f(images) - f(the image blurred by max_sigma)`` at the targets.
The blur is scipy's ``gaussian_filter`` with zero padding (``mode="constant"``), applied here as two matrix
products per image, so every blur width runs in one batched, jittable program.
"""
from __future__ import annotations

import math
from typing import Optional

import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from cnn_jax.interpret.core import Array, LogitsFn, check_inputs, input_gradient, map_over


def blur_matrices(size: int, sigmas) -> np.ndarray:
    """(len(sigmas), size, size) float32: matrix k times a length-``size`` signal is scipy's zero-padded Gaussian
    filter of width ``sigmas[k]`` (the identity for 0)."""
    eye = np.eye(size)
    return np.stack([eye if s == 0 else ndimage.gaussian_filter1d(eye, s, axis=0, mode="constant")
                     for s in sigmas]).astype(np.float32)


def blur(images: Array, rows: Array, cols: Array) -> Array:
    """Each image (N, H, W, C) blurred by the (H, H) and (W, W) matrices of ``blur_matrices``."""
    return jnp.einsum("hi,nijc,wj->nhwc", rows, images, cols)


def blur_ig(f: LogitsFn, images: Array, targets: Array, *, max_sigma: float = 50.0, steps: int = 100,
            grad_step: float = 0.01, sqrt: bool = False, batch_size: Optional[int] = None) -> Array:
    """Blur IG maps shaped like ``images``, PAIR's defaults. ``batch_size`` blur widths run at a time, each on
    the whole batch (None: all of them)."""
    targets = check_inputs(images, targets, "blur_ig")
    if steps < 1 or max_sigma <= 0 or grad_step <= 0:
        raise ValueError(f"blur_ig needs steps >= 1, max_sigma > 0 and grad_step > 0, got steps={steps}, "
                         f"max_sigma={max_sigma}, grad_step={grad_step}")
    fractions = [i / steps for i in range(steps + 1)]
    sigmas = [math.sqrt(t * max_sigma) if sqrt else t * max_sigma for t in fractions]
    height, width = images.shape[1:3]
    here, ahead = sigmas[:-1], [s + grad_step for s in sigmas[:-1]]
    path = (jnp.asarray(blur_matrices(height, here)), jnp.asarray(blur_matrices(width, here)),
            jnp.asarray(blur_matrices(height, ahead)), jnp.asarray(blur_matrices(width, ahead)),
            jnp.asarray(np.diff(sigmas), images.dtype))

    def step(point):
        rows, cols, rows_ahead, cols_ahead, width_of_step = point
        blurred = blur(images, rows, cols)
        direction = (blur(images, rows_ahead, cols_ahead) - blurred) / grad_step
        return width_of_step * direction * input_gradient(f, blurred, targets)

    return -map_over(step, path, batch_size).sum(axis=0)
