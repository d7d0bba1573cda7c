"""Dense float32 convolutions on oneDNN for the CPU backend, behind ``ops.conv2d``.

XLA's CPU convolutions match oneDNN's forward but run the weight gradient 3-5x slower, and grouped (depthwise)
ones far slower in every direction (BENCHMARKS.md); this package puts oneDNN's forward, data-gradient and
weight-gradient kernels under one differentiable primitive.
``available()`` is False (and ``conv2d`` stays on XLA) without the oneDNN wheels or a C++ compiler, or with
``CNN_JAX_CONV=xla`` in the environment.
"""
from __future__ import annotations

import ctypes

import numpy as np

from cnn_jax.ops import arithmetic
from cnn_jax.ops.onednn import build


def available() -> bool:
    """Whether the kernel is built and registered (building it on first call)."""
    return build.load() is not None


def conv2d(x, kernel, strides, pads, dilations, groups=1):
    """``x`` (N, H, W, C) float32 with ``kernel`` (kh, kw, C // groups, F), explicit non-negative ``pads``; CPU only."""
    from cnn_jax.ops.onednn import primitive

    out_h, out_w = arithmetic.conv_output_hw(x.shape[1:3], kernel.shape[:2], strides, pads, dilations)
    geometry = (tuple(strides), tuple(map(tuple, pads)), tuple(dilations), groups)
    return primitive.forward(x, kernel, geometry, (x.shape[0], out_h, out_w, kernel.shape[3]))


def implementation(mode: int, x_shape, kernel_shape, strides, pads, dilations, groups=1) -> str:
    """The oneDNN implementation that serves a convolution, e.g. ``"brg_conv_fwd:avx512_core"``."""
    library = build.load()
    if library is None:
        return "unavailable"
    (n, h, w, c), (kh, kw, _, o) = x_shape, kernel_shape
    out_h, out_w = arithmetic.conv_output_hw((h, w), (kh, kw), strides, pads, dilations)
    dims = np.asarray([n, h, w, c, kh, kw, o, out_h, out_w, *strides, *pads[0], *pads[1], *dilations, groups],
                      np.int64)
    return library.CnnJaxConvImplementation(mode, dims.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))).decode()
