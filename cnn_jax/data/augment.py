"""Batch augmentations in pure JAX, each ``fn(rng, images) -> images`` with per-example randomness.

They run on the device inside the jitted train step: no Python branching on values, no host
round trip. Images are NHWC floats in [0, 1] and keep their shape and range.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

Augment = Callable[[jax.Array, jax.Array], jax.Array]


def _check_images(images):
    if images.ndim != 4:
        raise ValueError(f"augmentations expect NHWC batches of rank 4, got shape {images.shape}")


def random_crop(rng: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
    """Zero-pads ``padding`` pixels on each side, then crops a random window of the original size.

    Zero padding, as in the ResNet CIFAR recipe and torchvision's RandomCrop default: each image
    moves by up to ``padding`` pixels and black enters at the edges.
    """
    _check_images(images)
    if padding < 0:
        raise ValueError(f"crop padding must be >= 0, got {padding}")
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(rng, (n, 2), 0, 2 * padding + 1)

    def crop(image, offset):
        return lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def random_flip(rng: jax.Array, images: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2."""
    _check_images(images)
    flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1], images)


def cutout(rng: jax.Array, images: jax.Array, size: int = 8) -> jax.Array:
    """Sets a ``size`` x ``size`` square of each image to 0 (black), at a random centre.

    As in DeVries & Taylor (2017) the centre can be anywhere in the image, so squares near the
    border are clipped and cover fewer pixels.
    """
    _check_images(images)
    if size < 1:
        raise ValueError(f"cutout size must be >= 1, got {size}")
    n, h, w, _ = images.shape
    rng_y, rng_x = jax.random.split(rng)
    top = jax.random.randint(rng_y, (n, 1, 1), 0, h) - size // 2
    left = jax.random.randint(rng_x, (n, 1, 1), 0, w) - size // 2
    rows, cols = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return jnp.where(inside[..., None], jnp.zeros((), images.dtype), images)


AUGMENTATIONS = ("crop", "flip", "cutout")


def make_augment(names: Sequence[str], *, crop_padding: int = 4, cutout_size: int = 8) -> Optional[Augment]:
    """Composes the named augmentations in the order given; None when ``names`` is empty.

    Valid names: "crop" (``random_crop`` with ``crop_padding``), "flip" (``random_flip``) and
    "cutout" (``cutout`` with ``cutout_size``). Each gets its own key split from ``rng``.
    """
    if isinstance(names, str):
        raise ValueError(f"make_augment takes a sequence of names such as ['crop', 'flip'], got the string {names!r}")
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; valid names are {AUGMENTATIONS}")
    if len(set(names)) != len(names):
        raise ValueError(f"augmentation names repeat in {list(names)}; give each at most once")
    if not names:
        return None
    by_name = {
        "crop": lambda rng, x: random_crop(rng, x, crop_padding),
        "flip": random_flip,
        "cutout": lambda rng, x: cutout(rng, x, cutout_size),
    }
    steps = [by_name[name] for name in names]

    def augment(rng: jax.Array, images: jax.Array) -> jax.Array:
        for step, key in zip(steps, jax.random.split(rng, len(steps))):
            images = step(key, images)
        return images

    return augment
