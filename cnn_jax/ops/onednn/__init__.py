"""Float32 and bfloat16 convolutions (dense, grouped, depthwise) on oneDNN for the CPU backend, behind ``ops.conv2d``.

XLA's CPU convolutions match oneDNN's forward but run the weight gradient 3-5x slower, and grouped (depthwise)
ones far slower in every direction (BENCHMARKS.md); this package puts oneDNN's forward, data-gradient and
weight-gradient kernels under one differentiable primitive. bfloat16 operands run oneDNN's bf16 kernels
(bf16 products, float32 accumulation, a bf16 result), which ``bfloat16_native()`` checks this CPU has.
``available()`` is False (and ``conv2d`` stays on XLA) without the oneDNN wheels or a C++ compiler; kernel mode
"portable" (``ops.kernels``) never asks for it.
"""
from __future__ import annotations

import ctypes
import functools

import jax.numpy as jnp
import numpy as np

from cnn_jax.ops import arithmetic
from cnn_jax.ops.onednn import build


def available() -> bool:
    """Whether the kernel is built and registered (building it on first call)."""
    return build.load() is not None


@functools.lru_cache(maxsize=None)
def bfloat16_native() -> bool:
    """Whether oneDNN serves bfloat16 convolutions here with JIT kernels for bf16 instructions (AVX-512 BF16 or AMX)
    in every mode, not its reference loops or bf16 emulated on older ISAs, either slower than XLA's convolution on
    f32. Checked on a 3x3 and a depthwise convolution."""
    for x_shape, kernel_shape, groups in (((8, 16, 16, 32), (3, 3, 32, 32), 1), ((8, 16, 16, 32), (3, 3, 1, 32), 32)):
        for mode in range(3):
            name = implementation(mode, x_shape, kernel_shape, (1, 1), ((1, 1), (1, 1)), (1, 1), groups, "bfloat16")
            if name.startswith(("ref", "error", "unavailable")) or not bfloat16_isa(name):
                return False
    return True


def bfloat16_isa(name: str) -> bool:
    """Whether an implementation name (``"brgconv:avx512_core_bf16"``) names bf16 instructions: its ISA part has
    ``bf16`` or ``amx`` in it."""
    isa = name.split(":", 1)[-1].split()[0] if ":" in name else ""
    return "bf16" in isa or "amx" in isa


def conv2d(x, kernel, strides, pads, dilations, groups=1):
    """``x`` (N, H, W, C) with ``kernel`` (kh, kw, C // groups, F), both float32 or both bfloat16, explicit
    non-negative ``pads``; CPU only. The result has their dtype."""
    from cnn_jax.ops.onednn import primitive

    out_h, out_w = arithmetic.conv_output_hw(x.shape[1:3], kernel.shape[:2], strides, pads, dilations)
    geometry = (tuple(strides), tuple(map(tuple, pads)), tuple(dilations), groups)
    return primitive.forward(x, kernel, geometry, (x.shape[0], out_h, out_w, kernel.shape[3]))


def implementation(mode: int, x_shape, kernel_shape, strides, pads, dilations, groups=1, dtype="float32",
                   residual: bool = False, activation=None) -> str:
    """The oneDNN implementation that serves a convolution, e.g. ``"brg_conv_fwd:avx512_core"``; ``dtype`` is
    ``"float32"`` or ``"bfloat16"``; mode 3 is the fused forward, with or without a ``residual``, ``activation``
    one of ``primitive.ACTIVATIONS``."""
    from cnn_jax.ops.onednn import primitive

    library = build.load()
    if library is None:
        return "unavailable"
    (n, h, w, c), (kh, kw, _, o) = x_shape, kernel_shape
    out_h, out_w = arithmetic.conv_output_hw((h, w), (kh, kw), strides, pads, dilations)
    dims = np.asarray([n, h, w, c, kh, kw, o, out_h, out_w, *strides, *pads[0], *pads[1], *dilations, groups,
                       int(residual), primitive.ACTIVATIONS.index(activation)], np.int64)
    bf16 = {"float32": 0, "bfloat16": 1}[jnp.dtype(dtype).name]
    return library.CnnJaxConvImplementation(mode, dims.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)),
                                            bf16).decode()
