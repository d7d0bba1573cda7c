"""2-D convolution on NHWC images with HWIO kernels: ``conv2d`` and a readable reference, ``conv2d_reference``."""
from __future__ import annotations

from typing import Optional

import jax.numpy as jnp

from cnn_jax.ops import arithmetic, fast
from cnn_jax.ops import padding as padding_lib
from cnn_jax.ops.checks import check_conv_operands
from cnn_jax.ops.geometry import NO_PADS, conv_geometry


def conv2d(x: jnp.ndarray, kernel: jnp.ndarray, bias: Optional[jnp.ndarray] = None, *,
           stride=1, padding: padding_lib.PaddingLike = "SAME", dilation=1, groups: int = 1) -> jnp.ndarray:
    """Cross-correlation of ``x`` (N, H, W, C) with ``kernel`` (kh, kw, C // groups, F), plus ``bias`` (F,).

    Output spatial sizes are ``conv_output_size(n, k, stride, padding, dilation)``. ``groups == C`` gives a
    depthwise convolution; "CIRCULAR" pads by wrapping. The kernel that computes it (XLA's, oneDNN's, shifted
    multiply-adds) is chosen by ``ops.kernels`` mode, dtype and shapes in ``ops.fast``; every choice computes the
    same function as ``conv2d_reference``.
    """
    check_conv_operands(x, kernel, groups)
    g = conv_geometry(x, kernel, stride, padding, dilation, groups)
    y = fast.convolve(x, kernel.astype(x.dtype), g)
    return y if bias is None else y + bias.astype(y.dtype)


def conv2d_reference(x: jnp.ndarray, kernel: jnp.ndarray, bias: Optional[jnp.ndarray] = None, *,
                     stride=1, padding: padding_lib.PaddingLike = "SAME", dilation=1, groups: int = 1) -> jnp.ndarray:
    """``conv2d`` written out as im2col + matmul, without loops.

    Each output pixel gathers its receptive field (kh x kw x C values) into a row of a patch matrix;
    the convolution is then one matrix product per group of that matrix with the flattened kernel.
    """
    check_conv_operands(x, kernel, groups)
    g = conv_geometry(x, kernel, stride, padding, dilation, groups)
    x = padding_lib.apply(x, g.pads, g.mode)
    (kh, kw, in_per_group, features), (sh, sw), (dh, dw) = kernel.shape, g.strides, g.dilations
    out_h, out_w = arithmetic.conv_output_hw(x.shape[1:3], (kh, kw), g.strides, NO_PADS, g.dilations)
    rows = (jnp.arange(out_h) * sh)[:, None] + (jnp.arange(kh) * dh)[None, :]  # (out_h, kh)
    cols = (jnp.arange(out_w) * sw)[:, None] + (jnp.arange(kw) * dw)[None, :]  # (out_w, kw)
    patches = x[:, rows[:, None, :, None], cols[None, :, None, :], :]  # (N, out_h, out_w, kh, kw, C)
    n = x.shape[0]
    patches = patches.reshape(n, out_h, out_w, kh * kw, groups, in_per_group)
    patches = patches.transpose(0, 1, 2, 4, 3, 5).reshape(n * out_h * out_w, groups, kh * kw * in_per_group)
    weights = kernel.reshape(kh * kw * in_per_group, groups, features // groups).transpose(1, 0, 2)
    y = jnp.einsum("pgk,gkf->pgf", patches, weights.astype(x.dtype))  # one matmul per group
    y = y.reshape(n, out_h, out_w, features)
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y
