"""MobileNetV2 (Sandler et al. 2018) and the inverted-residual network body it shares with EfficientNet-Lite.

``mobilenet_v2`` follows ``torchvision/models/mobilenetv2.py``: channels rounded by ``make_divisible``, padding k//2,
BatchNorm epsilon 1e-5 (momentum 0.1 in torch), dropout 0.2 before the classifier. ``variant="keras"`` follows
``keras/applications/mobilenet_v2.py``: TF SAME padding (its ZeroPadding2D(correct_pad) + VALID stride-2 convs pad
exactly like SAME), BatchNorm epsilon 1e-3 and momentum 0.999, no dropout, inputs scaled to [-1, 1].

Converter name map (one to one; ConvBN units hold ``conv`` {kernel} and ``bn`` {scale, bias | mean, var}; block i
holds ``expand`` (absent in block0), ``depthwise``, ``project``):
  ours          torchvision                         Keras
  stem          features.0.0 / features.0.1         Conv1 / bn_Conv1
  block{i}      features.{i+1}.conv:                block_{i}_expand, _depthwise, _project (each + _BN);
                  .0.0/.0.1 expand, .1.0/.1.1       block0: expanded_conv_depthwise (+ _BN),
                  depthwise, .2/.3 project          expanded_conv_project (+ _BN)
                  (block0: .0.* depthwise, .1/.2 project)
  head_conv     features.18.0 / features.18.1       Conv_1 / Conv_1_bn
  classifier    classifier.1                        predictions
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import ops
from cnn_jax.layers import ConvBN, Dropout, InvertedResidual, Normalize
from cnn_jax.models.registry import register
from cnn_jax.ops.checks import check_images

MIN_SIZE = 32  # the network downsamples by 32


class Stage(NamedTuple):
    """A run of ``repeats`` inverted residual blocks; the first one strides and changes the channels."""
    expansion: int
    features: int
    repeats: int
    strides: int
    kernel_size: int = 3


# (t, c, n, s) of Sandler et al. 2018, Table 2.
MOBILENET_V2_STAGES = (Stage(1, 16, 1, 1), Stage(6, 24, 2, 2), Stage(6, 32, 3, 2), Stage(6, 64, 4, 2),
                       Stage(6, 96, 3, 1), Stage(6, 160, 3, 2), Stage(6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``) without losing over 10%:
    the channel rounding of MobileNetV2 (torchvision ``_make_divisible``) and EfficientNet (TF ``round_filters``)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidualNet(nn.Module):
    """Stem 3x3/2 ConvBN -> stages of inverted residual blocks -> 1x1 ConvBN head -> global average pool -> dropout
    -> Dense. Subclasses give the widths and depths through ``architecture()``; ReLU6 throughout."""
    num_classes: int
    padding_mode: str = "symmetric"
    bn_epsilon: float = 1e-5
    bn_momentum: float = 0.9
    dropout_rate: float = 0.2
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)
    dtype: Any = jnp.float32

    def architecture(self) -> Tuple[int, Sequence[Stage], int]:
        """(stem features, stages, head features)."""
        raise NotImplementedError(f"{type(self).__name__} must define architecture()")

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        check_images(x, type(self).__name__, MIN_SIZE)
        stem_features, stages, head_features = self.architecture()
        unit = dict(padding_mode=self.padding_mode, bn_epsilon=self.bn_epsilon, bn_momentum=self.bn_momentum,
                    dtype=self.dtype)
        x = Normalize(self.mean, self.std, name="normalize")(x)
        x = ConvBN(stem_features, 3, 2, activation=nn.relu6, name="stem", **unit)(x, train)
        index = 0
        for number, stage in enumerate(stages, start=1):
            for repeat in range(stage.repeats):
                x = InvertedResidual(stage.features, stage.strides if repeat == 0 else 1, stage.expansion,
                                     stage.kernel_size, name=f"block{index}", **unit)(x, train)
                index += 1
            self.sow("intermediates", f"stage{number}", x)
        x = ConvBN(head_features, 1, activation=nn.relu6, name="head_conv", **unit)(x, train)
        self.sow("intermediates", "features", x)
        x = ops.global_avg_pool(x)
        x = Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
        return x.astype(jnp.float32)


class MobileNetV2(InvertedResidualNet):
    """MobileNetV2: Table 2 of Sandler et al. with every width scaled by ``width_multiplier`` (rounded to a multiple
    of 8); the 1280-feature head conv only grows (for multipliers above 1)."""
    width_multiplier: float = 1.0

    def architecture(self) -> Tuple[int, Sequence[Stage], int]:
        if self.width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be positive, got {self.width_multiplier}")
        stages = [s._replace(features=make_divisible(s.features * self.width_multiplier)) for s in MOBILENET_V2_STAGES]
        return (make_divisible(32 * self.width_multiplier), stages,
                make_divisible(1280 * max(1.0, self.width_multiplier)))


VARIANTS = {
    "torchvision": {},
    "keras": dict(padding_mode="same", bn_epsilon=1e-3, bn_momentum=0.999, dropout_rate=0.0, mean=(0.5, 0.5, 0.5),
                  std=(0.5, 0.5, 0.5)),
}


@register("mobilenet_v2", input_shape=(224, 224, 3), min_size=MIN_SIZE)
def mobilenet_v2(num_classes: int, variant: str = "torchvision", **kwargs) -> MobileNetV2:
    """MobileNetV2 (Sandler et al. 2018) as torchvision or, variant="keras", Keras builds it; width_multiplier."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown mobilenet_v2 variant {variant!r}: use one of {tuple(VARIANTS)}")
    return MobileNetV2(num_classes, **{**VARIANTS[variant], **kwargs})
