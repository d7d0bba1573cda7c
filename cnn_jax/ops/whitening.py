"""Patch whitening: a fixed first convolution that decorrelates the pixels of each k x k patch.

airbench94 (Keller Jordan, 2024) starts CIFAR-10 networks with a 2x2 convolution set, before
training, to the whitening transform of the training set's patches and left frozen: the next
layers then see inputs with identity second moments, which speeds up early training.
"""
from __future__ import annotations

import jax.numpy as jnp


def image_patches(images: jnp.ndarray, size: int) -> jnp.ndarray:
    """Every ``size`` x ``size`` patch of NHWC ``images`` (stride 1, no padding), flattened in
    (row, column, channel) order, the order of an HWIO kernel's first three axes: (N·P, k·k·C)."""
    if images.ndim != 4:
        raise ValueError(f"image_patches expects NHWC images of rank 4, got shape {images.shape}")
    n, h, w, c = images.shape
    if not 1 <= size <= min(h, w):
        raise ValueError(f"patch size {size} must be in [1, {min(h, w)}] for {h}x{w} images")
    rows, cols = h - size + 1, w - size + 1
    shifted = [images[:, i:i + rows, j:j + cols] for i in range(size) for j in range(size)]
    return jnp.stack(shifted, axis=3).reshape(n * rows * cols, size * size * c)


def patch_whitening_kernel(images: jnp.ndarray, size: int, eps: float = 5e-4) -> jnp.ndarray:
    """An HWIO kernel (size, size, C, 2·size²·C) that whitens the ``size`` x ``size`` patches of
    ``images``.

    Its first size²·C filters project a patch onto the eigenvectors of the patches' second-moment
    matrix (largest eigenvalue first), each scaled by 1/sqrt(eigenvalue + eps), so that on these
    images the outputs have second moments diag(λ / (λ + eps)), the identity where λ >> eps. The
    last size²·C filters are their negatives (as in airbench94), so that a ReLU or GELU after the
    convolution keeps both signs of each component. The moments are not centered: normalize the
    images first, as the network will.
    """
    patches = image_patches(jnp.asarray(images, jnp.float32), size)
    moments = patches.T @ patches / patches.shape[0]
    eigenvalues, eigenvectors = jnp.linalg.eigh(moments)  # ascending
    filters = eigenvectors[:, ::-1] / jnp.sqrt(eigenvalues[::-1] + eps)
    kernel = filters.reshape(size, size, images.shape[-1], -1)
    return jnp.concatenate([kernel, -kernel], axis=-1)
