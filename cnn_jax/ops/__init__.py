"""Pure functions on NHWC arrays: convolution, pooling, batch normalization, random masks, and the arithmetic of
conv stacks.

Everything here is jit, grad and vmap safe and knows nothing of modules, data or training. Which kernel computes
an op is chosen here alone, by one switch, ``kernels(mode)`` (``ops.switch``); the choices and the kernels that
join several ops are in ``ops.fast``.
"""
from cnn_jax.ops.arithmetic import LayerGeometry, ReceptiveField, conv_output_size, count_params, receptive_field
from cnn_jax.ops.batch_norm import (
    batch_norm,
    batch_norm_train,
    batch_norm_train_reference,
    batch_statistics,
    fold_batch_norm,
)
from cnn_jax.ops.checks import check_images
from cnn_jax.ops.conv import conv2d, conv2d_reference
from cnn_jax.ops.fast import conv2d_epilogue, conv2d_max_pool
from cnn_jax.ops.padding import same_padding
from cnn_jax.ops.pooling import avg_pool, global_avg_pool, global_max_pool, max_pool
from cnn_jax.ops.random import bernoulli
from cnn_jax.ops.switch import MODES, kernels
from cnn_jax.ops.whitening import image_patches, patch_whitening_kernel

__all__ = [
    "MODES", "LayerGeometry", "ReceptiveField", "avg_pool", "batch_norm", "batch_norm_train",
    "batch_norm_train_reference", "batch_statistics", "bernoulli", "check_images", "conv2d", "conv2d_epilogue",
    "conv2d_max_pool", "conv2d_reference", "conv_output_size", "count_params", "fold_batch_norm", "global_avg_pool",
    "global_max_pool", "image_patches", "kernels", "max_pool", "patch_whitening_kernel", "receptive_field",
    "same_padding",
]
