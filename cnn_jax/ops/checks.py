"""Checks of what callers hand a network or a convolution: NHWC float images of a usable size, HWIO kernels."""
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
        raise ValueError(f"{model} needs images of at least {min_size}x{min_size} pixels, got "
                         f"{x.shape[1]}x{x.shape[2]}")


def check_conv_operands(x: jnp.ndarray, kernel: jnp.ndarray, groups: int) -> None:
    """Raises a clear error unless ``x`` (N, H, W, C) and ``kernel`` (kh, kw, C // groups, F) fit ``groups``."""
    if x.ndim != 4:
        raise ValueError(f"conv2d expects NHWC images of rank 4, got shape {x.shape}; add a batch axis with x[None]")
    if kernel.ndim != 4:
        raise ValueError(f"conv2d expects an HWIO kernel of rank 4, got shape {kernel.shape}")
    channels, in_per_group, features = x.shape[-1], kernel.shape[2], kernel.shape[3]
    if channels % groups or features % groups:
        raise ValueError(f"groups={groups} must divide input channels ({channels}) and output features ({features})")
    if in_per_group * groups != channels:
        raise ValueError(
            f"kernel expects {in_per_group} input channels per group x {groups} groups = "
            f"{in_per_group * groups}, but the images have {channels}")
