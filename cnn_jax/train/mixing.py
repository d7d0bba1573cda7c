"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) of a batch, inside the train step.

Each example is mixed with its partner in the reversed batch, with one weight `lam` for the whole
batch, as timm's default "batch" mode does. The images come back mixed; the targets are mixed
with the same `lam` (`mix_targets`) once the number of classes is known from the logits.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def mixup(images: jax.Array, lam: jax.Array) -> jax.Array:
    """`lam * images + (1 - lam) * partners`; `lam = 1` returns the images unchanged."""
    lam = jnp.asarray(lam, images.dtype)
    return lam * images + (1 - lam) * images[::-1]


def cutmix(key: jax.Array, images: jax.Array, lam: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pastes a box of each partner into each image; returns the images and the weight of their
    own labels, 1 minus the box's area fraction.

    The box has sides `sqrt(1 - lam)` of the image's, a uniformly random centre, and is clipped
    at the borders, so its area (and the returned weight) is exact rather than `1 - lam`.
    """
    _, height, width, _ = images.shape
    side = jnp.sqrt(1.0 - jnp.asarray(lam, jnp.float32))
    half_h = (height * side).astype(jnp.int32) // 2
    half_w = (width * side).astype(jnp.int32) // 2
    key_y, key_x = jax.random.split(key)
    cy, cx = jax.random.randint(key_y, (), 0, height), jax.random.randint(key_x, (), 0, width)
    top, bottom = jnp.clip(cy - half_h, 0, height), jnp.clip(cy + half_h, 0, height)
    left, right = jnp.clip(cx - half_w, 0, width), jnp.clip(cx + half_w, 0, width)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    mixed = jnp.where(inside[None, :, :, None], images[::-1], images)
    area = (bottom - top) * (right - left)
    return mixed, 1.0 - area.astype(jnp.float32) / (height * width)


def mix_batch(key: jax.Array, images: jax.Array, mixup_alpha: float, cutmix_alpha: float,
              switch_prob: float) -> tuple[jax.Array, jax.Array]:
    """Mixup with `lam ~ Beta(mixup_alpha, mixup_alpha)` or CutMix with `lam ~ Beta(cutmix_alpha,
    cutmix_alpha)`; with both alphas positive, CutMix with probability `switch_prob`. An alpha of
    0 turns that method off (at least one must be on). Returns the images and `lam`, the weight
    of each image's own label."""
    if not (mixup_alpha > 0 or cutmix_alpha > 0):
        raise ValueError("mix_batch needs mixup_alpha > 0 or cutmix_alpha > 0")
    key_mixup, key_cutmix, key_box, key_switch = jax.random.split(key, 4)
    if mixup_alpha > 0:
        lam = jax.random.beta(key_mixup, mixup_alpha, mixup_alpha)
        mixed = mixup(images, lam)
    if cutmix_alpha > 0:
        cut, cut_lam = cutmix(key_box, images, jax.random.beta(key_cutmix, cutmix_alpha, cutmix_alpha))
        if mixup_alpha > 0:
            use_cutmix = jax.random.bernoulli(key_switch, switch_prob)
            return jnp.where(use_cutmix, cut, mixed), jnp.where(use_cutmix, cut_lam, lam)
        return cut, cut_lam
    return mixed, lam


def mix_targets(targets: jax.Array, lam: jax.Array) -> jax.Array:
    """Soft targets to match `mix_batch`'s images: `lam * targets + (1 - lam) * partners'`."""
    return lam * targets + (1 - lam) * targets[::-1]
