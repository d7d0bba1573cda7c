"""Convolution modules: a Linen ``Conv`` over ``ops.conv2d``, ``ConvPool`` (conv + activation + pool) and ``ConvBN``
(conv + BatchNorm + activation)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import ops
from cnn_jax.layers.batch_norm import BatchNorm

Array = jnp.ndarray
Dtype = Any
Activation = Optional[Callable[[Array], Array]]

# He (fan-out) initialization, as torchvision and Keras initialize conv kernels before ReLUs.
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")

PADDING_MODES = ("same", "symmetric", "circular")


def padding_for(mode: str, kernel_size: int, dilation: int = 1):
    """The ``ops.conv2d`` padding of a padding mode.

    "same": TensorFlow/XLA SAME (extra zero at the end for even totals), as TF and Keras models use;
    "symmetric": ``dilation * (k - 1) // 2`` zeros on every side, as PyTorch models use;
    "circular": SAME amounts, wrapped — for translation-equivariant networks.
    Stride-1 odd kernels pad the same way under all three except at the border values.
    """
    if mode == "same":
        return "SAME"
    if mode == "symmetric":
        return dilation * (kernel_size - 1) // 2
    if mode == "circular":
        return "CIRCULAR"
    raise ValueError(f"unknown padding mode {mode!r}: use one of {PADDING_MODES}")


class Conv(nn.Module):
    """2-D convolution with an HWIO kernel; computes in ``dtype``, keeps its params in float32."""
    features: int
    kernel_size: int = 3
    strides: int = 1
    padding: Any = "SAME"
    dilation: int = 1
    groups: int = 1
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    kernel_init: Callable = he_normal
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return self.convolve(x)

    def convolve(self, x: Array) -> Array:
        """The convolution, its parameters declared here (``__call__`` and subclasses' ``__call__`` use it)."""
        channels = x.shape[-1]
        if channels % self.groups:
            raise ValueError(f"{self.name}: groups={self.groups} does not divide the {channels} input channels")
        kernel = self.param("kernel", self.kernel_init,
                            (self.kernel_size, self.kernel_size, channels // self.groups, self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32) if self.use_bias else None
        return ops.conv2d(x.astype(self.dtype), kernel.astype(self.dtype),
                          None if bias is None else bias.astype(self.dtype), stride=self.strides,
                          padding=self.padding, dilation=self.dilation, groups=self.groups)


class ConvPool(Conv):
    """Conv -> activation -> pool: one stage of a classic CNN (LeNet, the Keras MNIST convnet).

    ``pool(activation(conv(x)), window)``, the pool (``ops.max_pool`` or ``ops.avg_pool``) over non-overlapping
    ``window`` x ``window`` patches. Its parameters are the convolution's (``kernel``, ``bias``).
    """
    activation: Callable[[Array], Array] = nn.relu
    pool: Callable = ops.max_pool
    window: int = 2

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return self.pool(self.activation(self.convolve(x)), self.window)


class ConvBN(nn.Module):
    """Conv -> BatchNorm -> (+ residual) -> activation, the unit every zoo CNN is made of.

    ``activation(batch_norm(conv(x)) + residual)``: a ``residual`` passed to the call (a residual block's shortcut)
    is added before the activation; ``activation=None`` gives the linear projection of inverted residuals.
    ``bn_momentum`` is Flax's (running = momentum * running + (1 - momentum) * batch): PyTorch's 0.1 is 0.9 here.
    ``bn_use_scale=False`` leaves the BatchNorm without its learned scale (airbench94).
    """
    features: int
    kernel_size: int = 3
    strides: int = 1
    padding_mode: str = "symmetric"
    dilation: int = 1
    groups: int = 1
    activation: Activation = nn.relu
    use_bias: bool = False
    bn_epsilon: float = 1e-5
    bn_momentum: float = 0.9
    bn_scale_init: Callable = nn.initializers.ones
    bn_use_scale: bool = True
    kernel_init: Callable = he_normal
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False, residual: Optional[Array] = None) -> Array:
        x = Conv(self.features, self.kernel_size, self.strides,
                 padding_for(self.padding_mode, self.kernel_size, self.dilation), self.dilation, self.groups,
                 use_bias=self.use_bias, dtype=self.dtype, kernel_init=self.kernel_init, name="conv")(x)
        x = BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                      use_scale=self.bn_use_scale, scale_init=self.bn_scale_init, dtype=self.dtype, name="bn")(x)
        if residual is not None:
            if residual.shape != x.shape:
                raise ValueError(f"{self.name}: the residual has shape {residual.shape}, the normalized branch "
                                 f"{x.shape}: the shortcut must match it")
            x = x + residual.astype(self.dtype)
        return x if self.activation is None else self.activation(x)
