"""BatchNorm over the channel axis: Flax's ``nn.BatchNorm`` (same fields, variables, statistics and running
averages), computed by ``ops.batch_norm`` in evaluation and ``ops.batch_norm_train`` in training."""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import ops

Dtype = Any


class BatchNorm(nn.Module):
    """Normalizes each channel by the batch's statistics in training, by their running averages in evaluation,
    then scales and shifts it: ``(x - mean) / sqrt(var + epsilon) * scale + bias``.

    The running averages follow ``running = momentum * running + (1 - momentum) * batch``.
    """
    use_running_average: Optional[bool] = None
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Optional[Dtype] = None
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Callable = nn.initializers.zeros
    scale_init: Callable = nn.initializers.ones

    @nn.compact
    def __call__(self, x, use_running_average: Optional[bool] = None):
        use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
        scale = (self.param("scale", self.scale_init, features, jnp.float32) if self.use_scale
                 else jnp.ones(features, jnp.float32))
        bias = (self.param("bias", self.bias_init, features, jnp.float32) if self.use_bias
                else jnp.zeros(features, jnp.float32))
        dtype = self.dtype or jnp.result_type(x, jnp.float32)
        if use_running_average:
            return ops.batch_norm(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon).astype(dtype)
        y, (mean, var) = ops.batch_norm_train(x, scale, bias, self.epsilon)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y.astype(dtype)
