"""A fast-training CIFAR-10 network after Keller Jordan's airbench94 (2024), the speed-record holder's design."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import ops
from cnn_jax.layers import BatchNorm, Conv, ConvBN, Normalize, he_normal
from cnn_jax.models.registry import register
from cnn_jax.ops.checks import check_images

Array = jnp.ndarray
Dtype = Any

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def dirac_init(base: Callable = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")) -> Callable:
    """A conv-kernel initializer (HWIO) whose first min(in, out) filters pass their input channel through
    unchanged (a centred 1, as PyTorch's ``dirac_``), the rest drawn from ``base`` (by default PyTorch's
    conv default, uniform with variance 1/(3 fan_in)); airbench94 starts its 3x3 convs this way."""
    def init(key, shape, dtype=jnp.float32):
        height, width, inputs, outputs = shape
        kernel = base(key, shape, dtype)
        n = min(inputs, outputs)
        identity = jnp.zeros((height, width, inputs, n), dtype).at[height // 2, width // 2].set(jnp.eye(inputs, n))
        return kernel.at[..., :n].set(identity)
    return init


class AirbenchNet(nn.Module):
    """A 2x2 stem conv, then per stage conv3x3 -> 2x2 max pool -> BN -> GELU -> conv3x3 -> BN -> GELU; global
    max pooling and a bias-free linear head.

    Pooling right after the first conv of a stage runs the second conv and both BatchNorms at a quarter of the
    pixels, which is most of why the net trains fast. ``widths`` defaults to airbench94's 64-256-256 (1.97M
    params); the CIFAR-10 fast recipe trains the half-width 32-128-128 (0.50M) to fit a 2-core CPU.

    By default the net differs from airbench94 in four ways, each a field: the stem pads to keep 32x32 (so
    pooling gives 16, 8, 4; ``pad_stem=False`` is airbench94's unpadded 31x31, pooled to 15, 7, 3), BatchNorm
    keeps its scale at momentum 0.9 (``bn_scale=False, bn_momentum=0.6``: airbench94's, which also trains the
    offsets at 64x the learning rate, see ``experiments/cifar10_fast.py``), the 3x3 convs start from He
    initialization (``dirac=True``: identity filters first, ``dirac_init``), and the logits are not scaled
    (``logit_scale=1/9``: airbench94's, paired with its learning rates). The stem is learned unless a caller
    sets it to the whitening of the training patches (``--whiten_stem``).
    """
    num_classes: int
    widths: Sequence[int] = (64, 256, 256)
    stem_width: int = 24
    dtype: Dtype = jnp.float32
    mean: Sequence[float] = CIFAR10_MEAN
    std: Sequence[float] = CIFAR10_STD
    pad_stem: bool = True
    bn_scale: bool = True
    bn_momentum: float = 0.9
    dirac: bool = False
    logit_scale: float = 1.0

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        check_images(x, "airbench", 2 ** len(self.widths) + (0 if self.pad_stem else 1))
        x = Normalize(self.mean, self.std)(x)
        padding = ((0, 1), (0, 1)) if self.pad_stem else "VALID"
        x = nn.gelu(Conv(self.stem_width, 2, padding=padding, dtype=self.dtype, name="stem")(x))
        init = dirac_init() if self.dirac else he_normal
        for stage, width in enumerate(self.widths, start=1):
            x = Conv(width, 3, padding="SAME", use_bias=False, dtype=self.dtype, kernel_init=init,
                     name=f"stage{stage}_conv0")(x)
            x = ops.max_pool(x, 2)
            x = BatchNorm(use_running_average=not train, momentum=self.bn_momentum, use_scale=self.bn_scale,
                          dtype=self.dtype, name=f"stage{stage}_bn0")(x)
            x = nn.gelu(x)
            x = ConvBN(width, 3, padding_mode="same", activation=nn.gelu, bn_momentum=self.bn_momentum,
                       bn_use_scale=self.bn_scale, kernel_init=init, dtype=self.dtype,
                       name=f"stage{stage}_conv1")(x, train)
            self.sow("intermediates", f"stage{stage}", x)
        self.sow("intermediates", "features", x)
        x = jnp.max(x, axis=(1, 2))
        logits = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype, name="head")(x)
        return (logits * self.logit_scale if self.logit_scale != 1 else logits).astype(jnp.float32)


@register("airbench", input_shape=(32, 32, 3), min_size=8)
def build_airbench(num_classes: int, **kwargs) -> AirbenchNet:
    """airbench94's network (64-256-256); kwargs set any field, e.g. ``widths=(32, 128, 128)``."""
    return AirbenchNet(num_classes, **kwargs)


@register("airbench_half", input_shape=(32, 32, 3), min_size=8)
def build_airbench_half(num_classes: int, **kwargs) -> AirbenchNet:
    """airbench94's network at half width (32-128-128): the CIFAR-10 fast recipe's model on CPU."""
    return AirbenchNet(num_classes, **{"widths": (32, 128, 128), **kwargs})
