"""Occlusion sensitivity (Zeiler & Fergus 2014): how much the target logit drops when a patch is hidden."""
from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
import numpy as np

from cnn_jax.interpret.core import Array, LogitsFn, check_inputs, map_over, selected_logits


def _window_starts(size: int, patch: int, stride: int) -> list:
    """Starts every ``stride`` pixels, plus a last window flush with the far edge so that every pixel is covered."""
    return sorted(set(range(0, size - patch + 1, stride)) | {size - patch})


def occlusion_masks(height: int, width: int, patch: int, stride: int) -> np.ndarray:
    """One (height, width) mask per window position, 1 inside the patch: (positions, height, width)."""
    rows, cols = _window_starts(height, patch, stride), _window_starts(width, patch, stride)
    masks = np.zeros((len(rows) * len(cols), height, width), np.float32)
    for k, (r, c) in enumerate((r, c) for r in rows for c in cols):
        masks[k, r:r + patch, c:c + patch] = 1.0
    return masks


def occlusion(f: LogitsFn, images: Array, targets: Array, *, patch: int = 8, stride: Optional[int] = None,
              value=0.0, batch_size: Optional[int] = None) -> Array:
    """For each pixel, the mean drop ``f(images) - f(occluded)`` at the target over the ``patch`` x ``patch``
    windows (every ``stride`` pixels, default ``patch``) that cover it, the window filled with ``value`` (a gray
    level, or anything broadcastable to the images such as a blurred copy) on all channels.

    Positive where hiding the pixels hurts the target class. Returns maps shaped like the images (the same value
    on every channel). PAIR-code ``saliency``'s ``Occlusion`` sums the drops (stride 1) instead of averaging them.
    ``batch_size`` window positions run at a time (None: all of them).
    """
    targets = check_inputs(images, targets, "occlusion")
    stride = patch if stride is None else stride
    height, width = images.shape[1:3]
    if not 1 <= patch <= min(height, width) or stride < 1:
        raise ValueError(f"occlusion needs 1 <= patch <= {min(height, width)} (the image side) and stride >= 1, "
                         f"got patch={patch}, stride={stride}")
    masks = occlusion_masks(height, width, patch, stride)
    fill = jnp.broadcast_to(jnp.asarray(value, images.dtype), images.shape)
    reference = selected_logits(f(images), targets)

    def drop(mask):
        mask = mask[None, :, :, None]
        return reference - selected_logits(f(images * (1 - mask) + fill * mask), targets)

    drops = map_over(drop, jnp.asarray(masks), batch_size)  # (positions, N)
    heat = jnp.einsum("pn,phw->nhw", drops, masks) / masks.sum(axis=0)
    return jnp.broadcast_to(heat[..., None], images.shape).astype(images.dtype)
