"""Flax Linen modules over ``cnn_jax.ops``: conv units and the residual blocks of the model zoo.

Every module takes ``dtype`` (the compute precision, e.g. bfloat16 on accelerators) and keeps params in float32.
"""
from cnn_jax.layers.batch_norm import BatchNorm
from cnn_jax.layers.blocks import Bottleneck, InvertedResidual, ResidualBlock, SqueezeExcite
from cnn_jax.layers.conv import Conv, ConvBN, ConvPool, he_normal, padding_for
from cnn_jax.layers.dropout import Dropout
from cnn_jax.layers.normalize import Normalize

__all__ = ["BatchNorm", "Bottleneck", "Conv", "ConvBN", "ConvPool", "Dropout", "InvertedResidual", "Normalize",
           "ResidualBlock", "SqueezeExcite", "he_normal", "padding_for"]
