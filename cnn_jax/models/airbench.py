"""A fast-training CIFAR-10 network after Keller Jordan's airbench94 (2024), the speed-record holder's design."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import ops
from cnn_jax.layers import Conv, ConvBN, Normalize
from cnn_jax.models.registry import register
from cnn_jax.ops.checks import check_images

Array = jnp.ndarray
Dtype = Any

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class AirbenchNet(nn.Module):
    """A 2x2 stem conv, then per stage conv3x3 -> 2x2 max pool -> BN -> GELU -> conv3x3 -> BN -> GELU; global
    max pooling and a bias-free linear head.

    Pooling right after the first conv of a stage runs the second conv and both BatchNorms at a quarter of the
    pixels, which is most of why the net trains fast. Differences from airbench94: the stem is learned rather
    than initialized to the whitening of the training patches and frozen, it pads to keep 32x32 (so pooling
    gives 16, 8, 4), BatchNorm keeps its scale, and the logits are not scaled by 1/9 (which airbench pairs with
    its own learning-rate scaling; cnn_jax's optimizers take ordinary learning rates). ``widths`` defaults to airbench94's 64-256-256 (1.97M
    params); the CIFAR-10 fast recipe trains the half-width 32-128-128 (0.50M) to fit a 2-core CPU.
    """
    num_classes: int
    widths: Sequence[int] = (64, 256, 256)
    stem_width: int = 24
    dtype: Dtype = jnp.float32
    mean: Sequence[float] = CIFAR10_MEAN
    std: Sequence[float] = CIFAR10_STD

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        check_images(x, "airbench", 2 ** len(self.widths))
        x = Normalize(self.mean, self.std)(x)
        x = nn.gelu(Conv(self.stem_width, 2, padding=((0, 1), (0, 1)), dtype=self.dtype, name="stem")(x))
        for stage, width in enumerate(self.widths, start=1):
            x = Conv(width, 3, padding="SAME", use_bias=False, dtype=self.dtype, name=f"stage{stage}_conv0")(x)
            x = ops.max_pool(x, 2)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                             name=f"stage{stage}_bn0")(x)
            x = nn.gelu(x)
            x = ConvBN(width, 3, padding_mode="same", activation=nn.gelu, dtype=self.dtype,
                       name=f"stage{stage}_conv1")(x, train)
            self.sow("intermediates", f"stage{stage}", x)
        x = jnp.max(x, axis=(1, 2))
        self.sow("intermediates", "features", x)
        logits = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype, name="head")(x)
        return logits.astype(jnp.float32)


@register("airbench", input_shape=(32, 32, 3), min_size=8)
def build_airbench(num_classes: int, **kwargs) -> AirbenchNet:
    """airbench94's network (64-256-256); kwargs set any field, e.g. ``widths=(32, 128, 128)``."""
    return AirbenchNet(num_classes, **kwargs)


@register("airbench_half", input_shape=(32, 32, 3), min_size=8)
def build_airbench_half(num_classes: int, **kwargs) -> AirbenchNet:
    """airbench94's network at half width (32-128-128): the CIFAR-10 fast recipe's model on CPU."""
    return AirbenchNet(num_classes, **{"widths": (32, 128, 128), **kwargs})
