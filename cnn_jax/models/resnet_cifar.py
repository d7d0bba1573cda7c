"""The CIFAR ResNets of He et al. 2016 ("Deep Residual Learning for Image Recognition", sec. 4.2)."""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.layers import ConvBN, Normalize, ResidualBlock
from cnn_jax.models.mlp import MLPHead
from cnn_jax.models.registry import register
from cnn_jax.ops.checks import check_images

Dtype = Any

STAGE_FEATURES = (16, 32, 64)
DEPTHS = (20, 32, 44, 56)


class CifarResNet(nn.Module):
    """ResNet-``depth`` for 32x32 images: 6n + 2 layers with n = (depth - 2) / 6.

    A 3x3 ConvBN of 16 filters, three stages of n basic blocks at 16, 32 and 64 filters (the first block of
    stages 2 and 3 strides by 2), global average pooling and a dense layer. Shortcuts are parameter-free
    (option A: subsample and zero-pad the new channels), giving 269,722 params for ResNet-20 and 853,018 for
    ResNet-56 with 10 classes. ``padding_mode="circular"`` makes every conv periodic: the logits are then
    invariant to rolling the image by multiples of 4 (the total stride).
    """
    min_size: ClassVar[int] = 4  # the total stride: the last stage sees at least 1x1
    num_classes: int
    depth: int = 20
    padding_mode: str = "symmetric"
    dtype: Dtype = jnp.float32
    mean: Sequence[float] = (0.5,)
    std: Sequence[float] = (0.25,)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), "
                             f"got {self.depth}")
        check_images(x, f"resnet{self.depth}", self.min_size)
        x = Normalize(self.mean, self.std)(x)
        x = ConvBN(STAGE_FEATURES[0], 3, padding_mode=self.padding_mode, dtype=self.dtype, name="stem")(x, train)
        for stage, features in enumerate(STAGE_FEATURES, start=1):
            for block in range((self.depth - 2) // 6):
                x = ResidualBlock(features, strides=2 if stage > 1 and block == 0 else 1, shortcut="pad",
                                  padding_mode=self.padding_mode, dtype=self.dtype,
                                  name=f"stage{stage}_block{block}")(x, train)
            self.sow("intermediates", f"stage{stage}", x)
        self.sow("intermediates", "features", x)
        return MLPHead(self.num_classes, pool="average", dtype=self.dtype, name="head")(x, train)


def _builder(depth: int):
    def build(num_classes: int, **kwargs) -> CifarResNet:
        return CifarResNet(num_classes, depth, **kwargs)
    n = (depth - 2) // 6
    build.__doc__ = (f"ResNet-{depth} for CIFAR (He et al. 2016, sec. 4.2): {n} basic blocks per stage at "
                     "16/32/64 filters, parameter-free shortcuts.")
    return build


for _depth in DEPTHS:
    register(f"resnet{_depth}", input_shape=(32, 32, 3), min_size=CifarResNet.min_size)(_builder(_depth))
