"""Small classic CNNs for MNIST and CIFAR-sized images: simple_cnn, lenet5, cnn3, vgg_mini, alexnet_mini."""
from __future__ import annotations

from typing import Any, Callable, ClassVar, NamedTuple, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import ops
from cnn_jax.layers import Conv, ConvBN, ConvPool, Dropout, Normalize
from cnn_jax.models.mlp import MNIST_MEAN, MNIST_STD, MLPHead
from cnn_jax.models.registry import register
from cnn_jax.ops.checks import check_images

Array = jnp.ndarray
Dtype = Any


ACTIVATIONS = {"relu": nn.relu, "tanh": nn.tanh, "gelu": nn.gelu}
POOLINGS = {"max": ops.max_pool, "avg": ops.avg_pool}


class SimpleCNN(nn.Module):
    """Keras' "simple MNIST convnet" (keras.io/examples/vision/mnist_convnet), 34,826 params on 28x28x1.

    Conv 32 (3x3, VALID) -> ReLU -> 2x2 max pool -> Conv 64 (3x3, VALID) -> ReLU -> 2x2 max pool -> flatten ->
    dropout 0.5 -> Dense. No hidden dense layer: about 2.4 million multiply-adds per image, so MNIST trains fast
    on a CPU.

    The architecture sweep of ``experiments/compare.py`` varies one design choice at a time: ``features`` (the
    filters of each conv stage, one stage per entry), ``kernel_size``, ``pooling`` ("max" or "avg", 2x2) and
    ``activation`` (a name in ``ACTIVATIONS``; names, not functions, so exports store them as JSON). Larger kernels
    need larger images: ``required_size`` pixels a side.
    """
    min_size: ClassVar[int] = 10  # of the defaults: 10 -> conv 8 -> pool 4 -> conv 2 -> pool 1
    num_classes: int
    features: Sequence[int] = (32, 64)
    kernel_size: int = 3
    pooling: str = "max"
    activation: str = "relu"
    dropout: float = 0.5
    dtype: Dtype = jnp.float32
    mean: Sequence[float] = MNIST_MEAN
    std: Sequence[float] = MNIST_STD

    @property
    def required_size(self) -> int:
        """The smallest image side that leaves a 1x1 map: undo each 2x2 pool and VALID conv, last stage first."""
        size = 1
        for _ in self.features:
            size = 2 * size + self.kernel_size - 1
        return size

    def _check_design(self) -> None:
        if not self.features or any(not isinstance(f, int) or f < 1 for f in self.features):
            raise ValueError(f"simple_cnn features must be a non-empty sequence of positive ints (filters per "
                             f"stage), got {self.features!r}; e.g. (32, 64)")
        if not isinstance(self.kernel_size, int) or self.kernel_size < 1:
            raise ValueError(f"simple_cnn kernel_size must be a positive int, got {self.kernel_size!r}; e.g. 3 or 5")
        if self.pooling not in POOLINGS:
            raise ValueError(f"simple_cnn pooling {self.pooling!r} is unknown: use one of {tuple(POOLINGS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"simple_cnn activation {self.activation!r} is unknown: use one of "
                             f"{tuple(ACTIVATIONS)}")

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        self._check_design()
        check_images(x, "simple_cnn", self.required_size)
        x = Normalize(self.mean, self.std)(x)
        pool, activation = POOLINGS[self.pooling], ACTIVATIONS[self.activation]
        for stage, features in enumerate(self.features, start=1):
            x = ConvPool(features, self.kernel_size, padding="VALID", activation=activation, pool=pool, window=2,
                         dtype=self.dtype, name=f"conv{stage}")(x)
            self.sow("intermediates", f"stage{stage}", x)
        self.sow("intermediates", "features", x)
        return MLPHead(self.num_classes, dropout=self.dropout, dtype=self.dtype, name="head")(x, train)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998): C1 conv 6@5x5 -> S2 -> C3 conv 16@5x5 -> S4 -> C5 120 -> F6 84 -> output.

    61,706 params on 32x32x1 with 10 classes. Images smaller than 32x32 are first zero-padded (centred, before
    normalization, so the pad is black background) to 32x32, as the paper placed 28x28 MNIST digits in a 32x32
    field; larger images give C5 a larger input. Modern simplifications, as in most reimplementations: tanh
    (``activation``) instead of the scaled 1.7159 tanh(2a/3); S2/S4 are plain 2x2 average pools without the
    trainable coefficient and bias; C3 connects to all six S2 maps (not the paper's table); C5 is a dense layer
    over S4 (the same thing at 32x32); the output is a dense layer, not Euclidean RBF units. No dropout.
    """
    min_size: ClassVar[int] = 1  # smaller images are padded
    num_classes: int
    activation: Callable[[Array], Array] = nn.tanh
    dtype: Dtype = jnp.float32
    mean: Sequence[float] = MNIST_MEAN
    std: Sequence[float] = MNIST_STD

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        check_images(x, "lenet5", self.min_size)
        pad_h, pad_w = max(32 - x.shape[1], 0), max(32 - x.shape[2], 0)
        x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
        x = Normalize(self.mean, self.std)(x)
        for stage, (features, name) in enumerate(((6, "c1"), (16, "c3")), start=1):
            x = Conv(features, 5, padding="VALID", dtype=self.dtype, kernel_init=nn.initializers.lecun_normal(),
                     name=name)(x)
            x = ops.avg_pool(self.activation(x), 2)
            self.sow("intermediates", f"stage{stage}", x)
        self.sow("intermediates", "features", x)
        return MLPHead(self.num_classes, hidden=(120, 84), activation=self.activation, dtype=self.dtype,
                       name="head")(x, train)


class VGGStage(NamedTuple):
    """``convs`` 3x3 ConvBN-ReLUs of ``features`` filters, then 2x2 max pooling and dropout at ``dropout``."""
    features: int
    convs: int
    dropout: float = 0.0


class VGGStyle(nn.Module):
    """Stacks of 3x3 conv-BN-ReLU, each stage ending in 2x2 max pooling (Simonyan & Zisserman 2015, with the BN
    of torchvision's vgg*_bn), then a dense head with dropout. Subclasses fix the stages and the head; images
    need at least 2 ** (number of stages) pixels a side."""
    model: ClassVar[str]
    num_classes: int
    stages: Sequence[VGGStage]
    hidden: Sequence[int]
    dropout: float = 0.5
    padding_mode: str = "symmetric"
    dtype: Dtype = jnp.float32
    mean: Sequence[float] = (0.5,)
    std: Sequence[float] = (0.25,)

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        check_images(x, self.model, 2 ** len(self.stages))
        x = Normalize(self.mean, self.std)(x)
        for stage, spec in enumerate(self.stages, start=1):
            for conv in range(spec.convs):
                x = ConvBN(spec.features, 3, padding_mode=self.padding_mode, dtype=self.dtype,
                           name=f"stage{stage}_conv{conv}")(x, train)
            x = ops.max_pool(x, 2)
            x = Dropout(spec.dropout, deterministic=not train)(x)
            self.sow("intermediates", f"stage{stage}", x)
        self.sow("intermediates", "features", x)
        return MLPHead(self.num_classes, self.hidden, self.dropout, dtype=self.dtype, name="head")(x, train)


class CNN3(VGGStyle):
    """The CIFAR-10 model CNN courses teach (e.g. Brownlee's "CNN from scratch for CIFAR-10", with BN and
    dropout): three stages of two 3x3 conv-BN-ReLU at 32, 64, 128 filters, each ending in 2x2 max pooling and
    dropout 0.2, 0.3, 0.4; then flatten -> Dense 128 -> ReLU -> dropout 0.5 -> Dense. 551,018 params on
    32x32x3 with 10 classes."""
    model: ClassVar[str] = "cnn3"
    stages: Sequence[VGGStage] = (VGGStage(32, 2, 0.2), VGGStage(64, 2, 0.3), VGGStage(128, 2, 0.4))
    hidden: Sequence[int] = (128,)


class VGGMini(VGGStyle):
    """VGG-16's first three stages for 32x32 images: 2, 2 and 3 convs at 64, 128 and 256 filters (conv-BN-ReLU,
    2x2 max pooling after each stage); the 4096-4096 classifier shrinks to flatten -> Dense 512 -> ReLU ->
    dropout 0.5 -> Dense 512 -> ReLU -> dropout 0.5 -> Dense. 4,102,090 params on 32x32x3 with 10 classes."""
    model: ClassVar[str] = "vgg_mini"
    stages: Sequence[VGGStage] = (VGGStage(64, 2), VGGStage(128, 2), VGGStage(256, 3))
    hidden: Sequence[int] = (512, 512)


class AlexNetMini(nn.Module):
    """AlexNet (Krizhevsky et al. 2012) for 32x32 images, with torchvision's 64-192-384-256-256 filters.

    conv1 5x5 (the 11x11 stride-4 stem shrunk to the small image, still the largest kernel) -> ReLU ->
    overlapping 3x3 stride-2 max pool -> conv2 5x5 -> ReLU -> pool -> conv3, conv4, conv5 3x3 -> ReLU -> pool
    (pools pad SAME: 32 -> 16 -> 8 -> 4) -> flatten -> Dense 1024 -> ReLU -> dropout 0.5 -> Dense 1024 -> ReLU ->
    dropout 0.5 -> Dense. Convs carry biases and there is no BatchNorm, as in the original; the local response
    normalization is left out, as torchvision does. 7,706,442 params on 32x32x3 with 10 classes.
    """
    min_size: ClassVar[int] = 8  # the total stride of the three pools
    num_classes: int
    hidden: Sequence[int] = (1024, 1024)
    dropout: float = 0.5
    dtype: Dtype = jnp.float32
    mean: Sequence[float] = (0.5,)
    std: Sequence[float] = (0.25,)

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        check_images(x, "alexnet_mini", self.min_size)
        x = Normalize(self.mean, self.std)(x)
        stages = (((64, 5),), ((192, 5),), ((384, 3), (256, 3), (256, 3)))
        layer = 0
        for stage, convs in enumerate(stages, start=1):
            for features, kernel in convs:
                layer += 1
                x = nn.relu(Conv(features, kernel, padding=kernel // 2, dtype=self.dtype, name=f"conv{layer}")(x))
            x = ops.max_pool(x, 3, 2, padding="SAME")
            self.sow("intermediates", f"stage{stage}", x)
        self.sow("intermediates", "features", x)
        return MLPHead(self.num_classes, self.hidden, self.dropout, dtype=self.dtype, name="head")(x, train)


@register("simple_cnn", input_shape=(28, 28, 1), min_size=SimpleCNN.min_size)
def build_simple_cnn(num_classes: int, **kwargs) -> SimpleCNN:
    """The classic MNIST convnet (Keras example): Conv32-MaxPool-Conv64-MaxPool-Dropout-Dense.

    kwargs set any field, e.g. ``features=(16, 32)``, ``kernel_size=5``, ``pooling="avg"``, ``activation="tanh"``.
    """
    return SimpleCNN(num_classes, **kwargs)


@register("lenet5", input_shape=(32, 32, 1), min_size=LeNet5.min_size)
def build_lenet5(num_classes: int, **kwargs) -> LeNet5:
    """LeNet-5 (LeCun et al. 1998), 6-16-120-84 with tanh and average pooling; pads 28x28 digits to 32x32."""
    return LeNet5(num_classes, **kwargs)


@register("cnn3", input_shape=(32, 32, 3), min_size=2 ** len(CNN3.stages))
def build_cnn3(num_classes: int, **kwargs) -> CNN3:
    """The course CIFAR-10 CNN: three blocks of two 3x3 conv-BN-ReLU (32/64/128), max pool and dropout each."""
    return CNN3(num_classes, **kwargs)


@register("vgg_mini", input_shape=(32, 32, 3), min_size=2 ** len(VGGMini.stages))
def build_vgg_mini(num_classes: int, **kwargs) -> VGGMini:
    """VGG-16's first three stages (64-128-256, conv-BN-ReLU) with a 512-512 dropout classifier, for 32x32."""
    return VGGMini(num_classes, **kwargs)


@register("alexnet_mini", input_shape=(32, 32, 3), min_size=AlexNetMini.min_size)
def build_alexnet_mini(num_classes: int, **kwargs) -> AlexNetMini:
    """AlexNet for 32x32 images: 5x5 first conv, overlapping max pooling, 1024-1024 dropout classifier."""
    return AlexNetMini(num_classes, **kwargs)
