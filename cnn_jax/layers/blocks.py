"""Residual building blocks: basic, bottleneck, inverted residual, and squeeze-excitation."""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import ops
from cnn_jax.layers.conv import Activation, Conv, ConvBN

Array = jnp.ndarray
Dtype = Any
SHORTCUTS = ("projection", "pad")


def _parameter_free_shortcut(x: Array, features: int, strides: int) -> Array:
    """He et al.'s option A: subsample by striding, then zero-pad the new channels (no parameters)."""
    x = x[:, ::strides, ::strides, :]
    extra = features - x.shape[-1]
    if extra < 0:
        raise ValueError(f"a parameter-free shortcut cannot reduce {x.shape[-1]} channels to {features}")
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class ResidualBlock(nn.Module):
    """Two 3x3 ConvBNs plus a shortcut (He et al. 2016), the unit of ResNet-18/34 and the CIFAR ResNets.

    ``shortcut="projection"`` uses a strided 1x1 ConvBN where the shape changes; ``"pad"`` the parameter-free
    option A of the CIFAR ResNets. ``zero_init_residual`` starts the last BN scale at zero (block = identity).
    """
    features: int
    strides: int = 1
    shortcut: str = "projection"
    padding_mode: str = "symmetric"
    zero_init_residual: bool = False
    bn_momentum: float = 0.9
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"unknown shortcut {self.shortcut!r}: use one of {SHORTCUTS}")
        unit = dict(bn_momentum=self.bn_momentum, dtype=self.dtype)
        residual = x.astype(self.dtype)
        if self.strides != 1 or x.shape[-1] != self.features:
            if self.shortcut == "pad":
                residual = _parameter_free_shortcut(x, self.features, self.strides).astype(self.dtype)
            else:
                residual = ConvBN(self.features, 1, self.strides, activation=None, name="shortcut", **unit)(x, train)
        y = ConvBN(self.features, 3, self.strides, self.padding_mode, name="conv1", **unit)(x, train)
        # relu(bn(conv2(y)) + residual)
        return ConvBN(self.features, 3, 1, self.padding_mode, name="conv2",
                      bn_scale_init=nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones,
                      **unit)(y, train, residual=residual)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (x ``expansion``) plus a projection shortcut: the ResNet-50 unit.

    ``stride_on="3x3"`` is torchvision's ResNet v1.5; ``"1x1"`` the original (and Keras) ResNet v1. Keras convs
    carry biases, BN epsilon 1.001e-5 and momentum 0.99: set ``use_bias``, ``bn_epsilon`` and ``bn_momentum``.
    """
    features: int
    strides: int = 1
    expansion: int = 4
    stride_on: str = "3x3"
    use_bias: bool = False
    bn_epsilon: float = 1e-5
    bn_momentum: float = 0.9
    padding_mode: str = "symmetric"
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        if self.stride_on not in ("3x3", "1x1"):
            raise ValueError(f"stride_on must be '3x3' (torchvision) or '1x1' (Keras), got {self.stride_on!r}")
        unit = dict(use_bias=self.use_bias, bn_epsilon=self.bn_epsilon, bn_momentum=self.bn_momentum, dtype=self.dtype)
        out = self.features * self.expansion
        s1, s3 = (1, self.strides) if self.stride_on == "3x3" else (self.strides, 1)
        residual = x.astype(self.dtype)
        if self.strides != 1 or x.shape[-1] != out:
            residual = ConvBN(out, 1, self.strides, activation=None, name="shortcut", **unit)(x, train)
        y = ConvBN(self.features, 1, s1, name="conv1", **unit)(x, train)
        y = ConvBN(self.features, 3, s3, self.padding_mode, name="conv2", **unit)(y, train)
        # relu(bn(conv3(y)) + residual)
        return ConvBN(out, 1, 1, name="conv3",
                      bn_scale_init=nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones,
                      **unit)(y, train, residual=residual)


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al. 2018): global pool -> reduce -> activation -> expand -> sigmoid gate."""
    reduced_features: int
    activation: Callable[[Array], Array] = nn.relu
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = x.astype(self.dtype)
        s = ops.global_avg_pool(x, keepdims=True)
        s = self.activation(Conv(self.reduced_features, 1, dtype=self.dtype, name="reduce")(s))
        s = nn.sigmoid(Conv(x.shape[-1], 1, dtype=self.dtype, name="expand")(s))
        return x * s


class InvertedResidual(nn.Module):
    """MobileNetV2's block (Sandler et al. 2018): 1x1 expand -> depthwise kxk -> [SE] -> linear 1x1 project.

    The residual connection is taken when the block keeps the shape (stride 1, same channels). EfficientNet-Lite
    uses it with 5x5 depthwise kernels, ReLU6 and no SE; ``se_ratio`` adds SE (ratio of the input channels).
    """
    features: int
    strides: int = 1
    expansion: int = 6
    kernel_size: int = 3
    activation: Activation = nn.relu6
    se_ratio: Optional[float] = None
    padding_mode: str = "symmetric"
    bn_epsilon: float = 1e-5
    bn_momentum: float = 0.9
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        unit = dict(bn_epsilon=self.bn_epsilon, bn_momentum=self.bn_momentum, dtype=self.dtype)
        channels = x.shape[-1]
        hidden = channels * self.expansion
        y = x
        if self.expansion != 1:
            y = ConvBN(hidden, 1, activation=self.activation, name="expand", **unit)(y, train)
        y = ConvBN(hidden, self.kernel_size, self.strides, self.padding_mode, groups=hidden,
                   activation=self.activation, name="depthwise", **unit)(y, train)
        if self.se_ratio:
            y = SqueezeExcite(max(1, int(channels * self.se_ratio)), dtype=self.dtype, name="se")(y)
        shortcut = self.strides == 1 and channels == self.features
        # bn(project(y)) + x
        return ConvBN(self.features, 1, activation=None, name="project", **unit)(
            y, train, residual=x.astype(self.dtype) if shortcut else None)
