"""Padding specs shared by convolutions and pools.

A padding spec is one of:
  * ``"SAME"``     output size ``ceil(n / stride)``, zeros split as TensorFlow/XLA do (extra at the end);
  * ``"CIRCULAR"`` the same amounts as ``"SAME"`` but wrapped around (periodic boundary);
  * ``"VALID"``    no padding;
  * an ``int`` p   p zeros on every side;
  * per-side pairs ``((top, bottom), (left, right))``.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import jax.numpy as jnp

PaddingLike = Union[str, int, Sequence[Tuple[int, int]]]
_NAMED = ("SAME", "VALID", "CIRCULAR")


def pair(value, name: str) -> Tuple[int, int]:
    """An int or a 2-sequence of positive ints as a (height, width) pair."""
    if isinstance(value, int):
        out = (value, value)
    else:
        out = tuple(int(v) for v in value)
        if len(out) != 2:
            raise ValueError(f"{name} must be an int or a (height, width) pair, got {value!r}")
    if min(out) < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return out


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> Tuple[int, int]:
    """(low, high) zeros that give ``ceil(size / stride)`` outputs, the extra one at the end."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def resolve(padding: PaddingLike, sizes, kernels, strides, dilations=(1, 1)):
    """Turns a padding spec into explicit ((lo, hi), (lo, hi)) pairs and a mode ("zeros" or "wrap")."""
    if isinstance(padding, str):
        name = padding.upper()
        if name not in _NAMED:
            raise ValueError(f"unknown padding {padding!r}: use one of {_NAMED}, an int, or "
                             "((top, bottom), (left, right))")
        if name == "VALID":
            return ((0, 0), (0, 0)), "zeros"
        pads = tuple(same_padding(n, k, s, d) for n, k, s, d in zip(sizes, kernels, strides, dilations))
        return pads, ("wrap" if name == "CIRCULAR" else "zeros")
    if isinstance(padding, int):
        if padding < 0:
            raise ValueError(f"padding must be non-negative, got {padding}")
        return ((padding, padding), (padding, padding)), "zeros"
    try:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    except (TypeError, ValueError):
        raise ValueError(f"padding {padding!r} is not a name, an int, or ((top, bottom), (left, right))") from None
    if len(pads) != 2 or min(min(p) for p in pads) < 0:
        raise ValueError(f"padding must be two non-negative (low, high) pairs, got {padding!r}")
    return pads, "zeros"


def check_fits(sizes, kernels, strides, dilations, pads) -> None:
    """Raises when a kernel (or pool window) is larger than the padded input along an axis."""
    for size, kernel, dilation, (lo, hi) in zip(sizes, kernels, dilations, pads):
        effective = (kernel - 1) * dilation + 1
        if size + lo + hi < effective:
            raise ValueError(f"a window of {kernel} (dilation {dilation}) does not fit an input of {size} "
                             f"padded by {(lo, hi)}: use a smaller kernel, more padding, or larger images")


def apply(x: jnp.ndarray, pads, mode: str, value=0.0) -> jnp.ndarray:
    """Pads the spatial axes of an NHWC array explicitly."""
    width = ((0, 0), *pads, (0, 0))
    if mode == "wrap":
        return jnp.pad(x, width, mode="wrap")
    return jnp.pad(x, width, constant_values=value)
