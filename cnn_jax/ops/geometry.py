"""A convolution's geometry resolved once: strides, dilations, explicit pads and the padding mode."""
from __future__ import annotations

import dataclasses
from typing import Tuple

import jax.numpy as jnp

from cnn_jax.ops import arithmetic
from cnn_jax.ops import padding as padding_lib

Pair = Tuple[int, int]
NO_PADS = ((0, 0), (0, 0))


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """Explicit ``pads`` ((top, bottom), (left, right)) in ``mode`` "zeros" or "wrap", and the groups."""
    strides: Pair
    dilations: Pair
    pads: Tuple[Pair, Pair]
    mode: str
    groups: int

    def output_hw(self, input_hw, kernel_hw) -> Pair:
        return arithmetic.conv_output_hw(input_hw, kernel_hw, self.strides, self.pads, self.dilations)

    def wrapped_first(self, x: jnp.ndarray):
        """``(x, geometry)`` with circular padding applied to ``x`` up front, so the kernel pads with zeros only."""
        if self.mode != "wrap":
            return x, self
        return padding_lib.apply(x, self.pads, self.mode), dataclasses.replace(self, pads=NO_PADS, mode="zeros")


def conv_geometry(x, kernel, stride, padding, dilation, groups) -> ConvGeometry:
    """Resolves a padding spec for ``x`` (N, H, W, C) and an HWIO ``kernel``, checking the kernel fits."""
    strides = padding_lib.pair(stride, "stride")
    dilations = padding_lib.pair(dilation, "dilation")
    pads, mode = padding_lib.resolve(padding, x.shape[1:3], kernel.shape[:2], strides, dilations)
    padding_lib.check_fits(x.shape[1:3], kernel.shape[:2], strides, dilations, pads)
    return ConvGeometry(strides, dilations, pads, mode, groups)
