"""Checks of what callers hand a network: a batch of NHWC float images of a usable size."""
from __future__ import annotations

import jax.numpy as jnp


def check_images(x: jnp.ndarray, model: str, min_size: int) -> None:
    """Raises a clear error for inputs a model cannot take: wrong rank, non-float dtype, too small."""
    if x.ndim != 4:
        raise ValueError(f"{model} expects a batch of NHWC images (rank 4), got shape {x.shape}; "
                         "for one image use images[None]")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{model} expects float images in [0, 1], got dtype {x.dtype}; "
                         "convert uint8 pixels with images.astype('float32') / 255")
    if min(x.shape[1:3]) < min_size:
        raise ValueError(f"{model} needs images of at least {min_size}x{min_size} pixels, got {x.shape[1]}x{x.shape[2]}")
