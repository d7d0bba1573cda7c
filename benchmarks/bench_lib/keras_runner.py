"""Keras 3 on its TensorFlow backend, through the compiled steps Keras itself builds: `model.train_on_batch`
and `model.predict_on_batch` after `model.compile(jit_compile=...)`.

`jit_compile=True` (XLA, what Keras' "auto" picks for this backend) or False (a plain `tf.function` graph
running TensorFlow's oneDNN kernels) comes from `spec.keras_jit_compile`; see `benchmarks/benchmark.py` for which
is the default and why. simple_cnn and resnet20 are written out here to mirror cnn_jax's layer for layer
(trainable-parameter counts checked); mobilenet_v2 and resnet50 are `keras.applications` (weights=None), which
cnn_jax's `variant="keras"` models follow. `spec.dtype == "bfloat16"` sets Keras' "mixed_bfloat16" policy (bf16
compute, float32 variables) before the model is built.
"""
from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "tensorflow"  # before keras is imported: the backend is fixed at import

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers, ops  # noqa: E402

from bench_lib import LEARNING_RATE, MOMENTUM, SEED, RecordSpec, Runner, check_params, random_batch  # noqa: E402

BN = dict(momentum=0.9, epsilon=1e-5)  # cnn_jax's (= PyTorch's) BatchNorm settings
APPLICATIONS = {"mobilenet_v2": "MobileNetV2", "resnet50": "ResNet50"}


def normalize(x, spec: RecordSpec):
    """`(x - mean) / std` per channel, with constants: cnn_jax models normalize inside the model."""
    std = np.asarray(spec.std)
    return layers.Normalization(mean=np.asarray(spec.mean), variance=std * std)(x)


def simple_cnn(spec: RecordSpec) -> keras.Model:
    """cnn_jax's simple_cnn: normalize -> [conv 3x3 VALID -> 2x2 max pool -> ReLU] x (32, 64) -> flatten ->
    dropout 0.5 -> dense."""
    inputs = keras.Input(spec.input_shape)
    x = normalize(inputs, spec)
    for features in (32, 64):
        x = layers.ReLU()(layers.MaxPooling2D(2)(layers.Conv2D(features, 3)(x)))
    x = layers.Dropout(0.5)(layers.Flatten()(x))
    return keras.Model(inputs, layers.Dense(spec.num_classes)(x), name="simple_cnn")


def conv_bn(x, features: int, strides: int, relu: bool = True):
    """3x3 conv (no bias) -> BatchNorm [-> ReLU], padded by 1 on every side like cnn_jax's "symmetric" mode:
    "same" at stride 1, an explicit ZeroPadding2D before a VALID conv at stride 2 (TF's "same" would pad
    only the bottom and right)."""
    padding = "same"
    if strides > 1:
        x, padding = layers.ZeroPadding2D(1)(x), "valid"
    x = layers.BatchNormalization(**BN)(layers.Conv2D(features, 3, strides, padding, use_bias=False)(x))
    return layers.ReLU()(x) if relu else x


def pad_shortcut(x, features: int, strides: int):
    """He et al.'s parameter-free option A, as cnn_jax's ResidualBlock(shortcut="pad"): subsample, then zero-pad
    the new channels evenly on both sides."""
    extra = features - x.shape[-1]
    return layers.Lambda(lambda t: ops.pad(t[:, ::strides, ::strides, :],
                                           ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2))))(x)


def resnet20(spec: RecordSpec) -> keras.Model:
    """cnn_jax's resnet20: normalize -> ConvBN-ReLU 16 -> 3 stages of 3 basic blocks (16, 32, 64 filters; stages
    2 and 3 stride by 2) -> global average pool -> dense."""
    inputs = keras.Input(spec.input_shape)
    x = conv_bn(normalize(inputs, spec), 16, 1)
    for stage, features in enumerate((16, 32, 64)):
        for block in range(3):
            strides = 2 if stage and not block else 1
            y = conv_bn(conv_bn(x, features, strides), features, 1, relu=False)
            if strides != 1 or x.shape[-1] != features:
                x = pad_shortcut(x, features, strides)
            x = layers.ReLU()(layers.Add()([y, x]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(spec.num_classes)(x), name="resnet20")


def make_model(spec: RecordSpec) -> keras.Model:
    """The model of `spec`, checked to have as many trainable parameters as cnn_jax's."""
    if spec.model == "simple_cnn":
        model = simple_cnn(spec)
    elif spec.model == "resnet20":
        model = resnet20(spec)
    else:
        model = getattr(keras.applications, APPLICATIONS[spec.model])(
            weights=None, input_shape=spec.input_shape, classes=spec.num_classes, classifier_activation=None)
    check_params(spec, sum(int(np.prod(w.shape)) for w in model.trainable_weights), model.name)
    return model


def build(spec: RecordSpec) -> Runner:
    keras.utils.set_random_seed(SEED)
    if spec.dtype == "bfloat16":  # bf16 compute, float32 variables: Keras' mixed precision
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = make_model(spec)
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=spec.keras_jit_compile)
    images, labels = (tf.constant(a) for a in random_batch(spec))
    if spec.mode == "train":
        def step():
            model.train_on_batch(images, labels)
    else:
        def step():
            model.predict_on_batch(images)
    return Runner(step, lambda: None)
