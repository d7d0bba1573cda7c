"""Shape arithmetic of convolution stacks: output sizes, receptive fields, parameter counts."""
from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

import jax
import numpy as np

from cnn_jax.ops import padding as padding_lib


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: padding_lib.PaddingLike = 0,
                     dilation: int = 1) -> int:
    """Output length of a conv or pool along one axis.

    ``floor((size + lo + hi - dilation * (kernel - 1) - 1) / stride) + 1`` for explicit padding (an int
    p means lo = hi = p, a pair is (lo, hi)); ``ceil(size / stride)`` for "SAME" and "CIRCULAR"; the
    floor formula with no padding for "VALID".
    """
    if min(size, kernel, stride, dilation) < 1:
        raise ValueError(f"size, kernel, stride and dilation must be positive, got {(size, kernel, stride, dilation)}")
    if isinstance(padding, str):
        name = padding.upper()
        if name in ("SAME", "CIRCULAR"):
            return math.ceil(size / stride)
        if name != "VALID":
            raise ValueError(f"unknown padding {padding!r}: use SAME, VALID, CIRCULAR, an int or a (lo, hi) pair")
        lo = hi = 0
    elif isinstance(padding, int):
        lo = hi = padding
    else:
        lo, hi = padding
    if min(lo, hi) < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    out = (size + lo + hi - dilation * (kernel - 1) - 1) // stride + 1
    if out < 1:
        raise ValueError(f"a kernel of {kernel} (dilation {dilation}) does not fit an input of {size} padded by "
                         f"{(lo, hi)}")
    return out


class LayerGeometry(NamedTuple):
    """One conv or pool layer along one axis: the only facts the receptive field depends on."""
    kernel: int
    stride: int = 1
    padding: int = 0   # zeros before the first pixel (the low side)
    dilation: int = 1


class ReceptiveField(NamedTuple):
    """Of one output unit, in input pixels: ``size`` seen, ``jump`` between neighbouring units,
    ``start`` the centre of the first unit's field (negative when it lies in the padding)."""
    size: int
    jump: int
    start: float



def conv_output_hw(size_hw, kernel_hw, strides, pads, dilations) -> tuple[int, int]:
    """``conv_output_size`` along height and width, with explicit ``pads`` ((top, bottom), (left, right))."""
    return tuple(conv_output_size(size_hw[axis], kernel_hw[axis], strides[axis], tuple(pads[axis]), dilations[axis])
                 for axis in (0, 1))

def receptive_field(layers: Sequence) -> ReceptiveField:
    """Receptive field of the last layer of a stack, each layer a ``LayerGeometry`` or (kernel, stride[, padding[,
    dilation]]).

    Recurrence: ``jump_out = jump * stride``, ``size_out = size + (k_eff - 1) * jump``,
    ``start_out = start + ((k_eff - 1) / 2 - padding) * jump`` with ``k_eff = dilation * (kernel - 1) + 1``.
    """
    size, jump, start = 1, 1, 0.0  # one pixel, centred on pixel 0
    for index, layer in enumerate(layers):
        layer = _geometry(layer, index)
        effective = layer.dilation * (layer.kernel - 1) + 1
        start = start + ((effective - 1) / 2 - layer.padding) * jump
        size = size + (effective - 1) * jump
        jump = jump * layer.stride
    return ReceptiveField(size, jump, start)


def _geometry(layer, index: int) -> LayerGeometry:
    """`layer` as a LayerGeometry: one already, a mapping of its fields, or a (kernel, stride, ...) sequence."""
    fields = ", ".join(LayerGeometry._fields)
    try:
        if isinstance(layer, LayerGeometry):
            geometry = layer
        elif isinstance(layer, Mapping):
            geometry = LayerGeometry(**layer)
        else:
            geometry = LayerGeometry(*layer)
    except TypeError as error:
        raise ValueError(f"layer {index} is {layer!r}, not a layer geometry ({error}): give a LayerGeometry, "
                         f"a (kernel, stride[, padding[, dilation]]) tuple or a dict with keys from {fields}") from None
    for name, value in geometry._asdict().items():
        minimum = 0 if name == "padding" else 1
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"layer {index} has {name}={value!r}: it must be an integer >= {minimum}")
    return geometry


def count_params(params) -> int:
    """Number of scalars in a pytree of arrays (params, batch_stats, or a whole variables dict)."""
    return int(sum(np.prod(np.shape(leaf), dtype=np.int64) for leaf in jax.tree_util.tree_leaves(params)))
