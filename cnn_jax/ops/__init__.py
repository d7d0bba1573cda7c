"""Pure functions on NHWC arrays: convolution, pooling, and the arithmetic of conv stacks.

Everything here is jit, grad and vmap safe and knows nothing of modules, data or training.
"""
from cnn_jax.ops.checks import check_images
from cnn_jax.ops.arithmetic import LayerGeometry, ReceptiveField, conv_output_size, count_params, receptive_field
from cnn_jax.ops.conv import (conv2d, conv2d_epilogue, conv2d_max_pool, conv2d_reference, fuses_epilogues, unfused,
                              xla_only)
from cnn_jax.ops.padding import same_padding
from cnn_jax.ops.pooling import avg_pool, global_avg_pool, global_max_pool, max_pool
from cnn_jax.ops.whitening import image_patches, patch_whitening_kernel

__all__ = [
    "LayerGeometry", "ReceptiveField", "avg_pool", "check_images", "conv2d", "conv2d_epilogue", "conv2d_max_pool",
    "conv2d_reference", "conv_output_size", "count_params", "fuses_epilogues", "global_avg_pool", "global_max_pool", "image_patches",
    "max_pool", "patch_whitening_kernel", "receptive_field", "same_padding", "unfused", "xla_only",
]
