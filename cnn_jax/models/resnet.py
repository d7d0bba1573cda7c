"""ImageNet ResNets (He et al. 2016) as torchvision builds them, and ResNet-50 as Keras builds it.

torchvision (``torchvision/models/resnet.py``) is ResNet v1.5: the bottleneck strides on its 3x3 conv, convs have no
bias, BatchNorm epsilon 1e-5, padding k//2 on every side. Keras (``keras/applications/resnet.py``) is ResNet v1: the
stride sits on the first 1x1 conv, every conv has a bias, BatchNorm epsilon 1.001e-5; its ZeroPadding2D(3) + VALID
7x7/2 stem is the same as a symmetric pad of 3, and its ZeroPadding2D(1) + 3x3/2 max pool sees only ReLU outputs
(>= 0), so padding that pool with zeros equals padding it with -inf as torchvision does.

Converter name map (one to one; ConvBN units hold ``conv`` {kernel, bias} and ``bn`` {scale, bias | mean, var}):
  ours                  torchvision                 Keras
  stem                  conv1 / bn1                 conv1_conv / conv1_bn
  stage{s}_block{b}     layer{s}.{b}                conv{s+1}_block{b+1}
    conv1..conv3        conv1..conv3 / bn1..bn3     _1_conv.._3_conv / _1_bn.._3_bn
    shortcut            downsample.0 / downsample.1 _0_conv / _0_bn
  classifier            fc                          predictions
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import ops
from cnn_jax.layers import Bottleneck, ConvBN, Normalize, ResidualBlock
from cnn_jax.models.registry import register
from cnn_jax.ops.checks import check_images

MIN_SIZE = 32  # the network downsamples by 32: smaller images leave the last stage under one pixel of content
BLOCKS = ("basic", "bottleneck")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Keras "caffe" preprocessing: RGB -> BGR, then subtract the BGR ImageNet mean from 0-255 pixels (no scaling).
# On [0, 1] inputs that is a channel flip (``bgr=True``) followed by Normalize(mean=BGR mean / 255, std=1 / 255).
KERAS_CAFFE_MEAN = (103.939 / 255, 116.779 / 255, 123.68 / 255)
KERAS_CAFFE_STD = (1 / 255,) * 3

VARIANTS = {
    "torchvision": {},
    "keras": dict(stride_on="1x1", use_bias=True, bn_epsilon=1.001e-5, bn_momentum=0.99,
                  mean=KERAS_CAFFE_MEAN, std=KERAS_CAFFE_STD, bgr=True),
}


class ImageNetResNet(nn.Module):
    """7x7/2 conv-BN-ReLU stem, 3x3/2 max pool, four stages (64, 128, 256, 512 features; stride 2 from stage 2 on),
    global average pool, Dense. ``block`` is "basic" (ResNet-18/34) or "bottleneck" (ResNet-50, 4x expansion).

    ``stride_on``, ``use_bias``, ``bn_epsilon`` and ``bn_momentum`` select torchvision's v1.5 or Keras' v1
    bottleneck. ``bgr`` flips the channels of the RGB input before ``Normalize`` (whose mean/std are then in BGR
    order), for weights trained on BGR pixels; callers always feed RGB in [0, 1].
    """
    num_classes: int
    stage_sizes: Sequence[int]
    block: str = "basic"
    stride_on: str = "3x3"
    use_bias: bool = False
    bn_epsilon: float = 1e-5
    bn_momentum: float = 0.9
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    bgr: bool = False
    dtype: Any = jnp.float32

    def _block(self, features: int, strides: int, name: str) -> nn.Module:
        if self.block == "basic":
            return ResidualBlock(features, strides, bn_momentum=self.bn_momentum, dtype=self.dtype, name=name)
        return Bottleneck(features, strides, stride_on=self.stride_on, use_bias=self.use_bias,
                          bn_epsilon=self.bn_epsilon, bn_momentum=self.bn_momentum, dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        check_images(x, "ImageNetResNet", MIN_SIZE)
        if self.block not in BLOCKS:
            raise ValueError(f"unknown block {self.block!r}: use one of {BLOCKS}")
        if self.block == "basic" and (self.stride_on != "3x3" or self.use_bias or self.bn_epsilon != 1e-5):
            raise ValueError("stride_on, use_bias and bn_epsilon configure bottleneck blocks only; "
                             "use block='bottleneck' or leave them at their defaults")
        if self.bgr:
            x = x[..., ::-1]
        x = Normalize(self.mean, self.std, name="normalize")(x)
        x = ConvBN(64, 7, 2, "symmetric", use_bias=self.use_bias, bn_epsilon=self.bn_epsilon,
                   bn_momentum=self.bn_momentum, dtype=self.dtype, name="stem")(x, train)
        x = ops.max_pool(x, 3, 2, padding=1)
        for stage, blocks in enumerate(self.stage_sizes):
            for index in range(blocks):
                strides = 2 if stage > 0 and index == 0 else 1
                x = self._block(64 * 2 ** stage, strides, f"stage{stage + 1}_block{index}")(x, train)
            self.sow("intermediates", f"stage{stage + 1}", x)
        self.sow("intermediates", "features", x)
        x = ops.global_avg_pool(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
        return x.astype(jnp.float32)


@register("resnet18", input_shape=(224, 224, 3), min_size=MIN_SIZE)
def resnet18(num_classes: int, **kwargs) -> ImageNetResNet:
    """ResNet-18 (He et al. 2016) as torchvision builds it: basic blocks [2, 2, 2, 2]."""
    return ImageNetResNet(num_classes, (2, 2, 2, 2), "basic", **kwargs)


@register("resnet34", input_shape=(224, 224, 3), min_size=MIN_SIZE)
def resnet34(num_classes: int, **kwargs) -> ImageNetResNet:
    """ResNet-34 (He et al. 2016) as torchvision builds it: basic blocks [3, 4, 6, 3]."""
    return ImageNetResNet(num_classes, (3, 4, 6, 3), "basic", **kwargs)


@register("resnet50", input_shape=(224, 224, 3), min_size=MIN_SIZE)
def resnet50(num_classes: int, variant: str = "torchvision", **kwargs) -> ImageNetResNet:
    """ResNet-50 (He et al. 2016): bottlenecks [3, 4, 6, 3] as torchvision (v1.5) or, variant="keras", Keras (v1)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown resnet50 variant {variant!r}: use one of {tuple(VARIANTS)}")
    return ImageNetResNet(num_classes, (3, 4, 6, 3), "bottleneck", **{**VARIANTS[variant], **kwargs})
