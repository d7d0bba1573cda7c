"""SmoothGrad (Smilkov et al. 2017): any attribution method averaged over noisy copies of the images.

Follows PAIR-code ``saliency``'s ``CoreSaliency.GetSmoothedMask``: the noise's standard deviation is ``noise_level``
times each image's value range (max - min), and ``magnitude`` averages squared maps instead of maps.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax

from cnn_jax.interpret.core import Array, LogitsFn, check_inputs, map_over

Method = Callable[[LogitsFn, Array, Array], Array]


def smoothgrad(method: Method, f: LogitsFn, images: Array, targets: Array, rng: jax.Array, *,
               num_samples: int = 25, noise_level: float = 0.15, magnitude: bool = False,
               batch_size: Optional[int] = None) -> Array:
    """The mean of ``method(f, images + noise, targets)`` over ``num_samples`` Gaussian noises drawn from ``rng``.

    ``method`` is any ``(f, images, targets) -> maps`` function, e.g. ``saliency`` or
    ``functools.partial(integrated_gradients, steps=32)``. ``batch_size`` noisy copies run at a time (None: all).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    noise = jax.random.normal(rng, (num_samples, *images.shape), images.dtype)
    return smoothgrad_with_noise(method, f, images, targets, noise, noise_level=noise_level, magnitude=magnitude,
                                 batch_size=batch_size)


def smoothgrad_with_noise(method: Method, f: LogitsFn, images: Array, targets: Array, noise: Array, *,
                          noise_level: float = 0.15, magnitude: bool = False,
                          batch_size: Optional[int] = None) -> Array:
    """``smoothgrad`` with the standard-normal ``noise`` (num_samples, *images.shape) given, e.g. to replay the
    draws of another implementation."""
    check_inputs(images, targets, "smoothgrad")
    if noise.ndim != 5 or noise.shape[1:] != images.shape:
        raise ValueError(f"noise must have shape (num_samples, *images.shape) = (S, *{tuple(images.shape)}), "
                         f"got {noise.shape}")
    if noise_level < 0:
        raise ValueError(f"noise_level is a fraction of each image's value range; it cannot be negative, "
                         f"got {noise_level}")
    spread = images.max(axis=(1, 2, 3), keepdims=True) - images.min(axis=(1, 2, 3), keepdims=True)
    sigma = noise_level * spread

    def noisy_map(z):
        maps = method(f, images + sigma * z, targets)
        return maps * maps if magnitude else maps

    return map_over(noisy_map, noise, batch_size).mean(axis=0)
