"""BatchNorm over the channel axis with a hand-written training gradient, an optional fused residual add and ReLU.

Flax's ``nn.BatchNorm`` differentiated by JAX leaves XLA:CPU five to seven passes over each normalized activation
per training step (the statistics, the normalization, and the gradients of the mean, of the mean of squares and of
the normalization, each its own fusion). Written out, a training step needs four: the statistics and the
normalized output forward; the two per-channel sums of the gradient and the input gradient backward. The ReLU
that follows most BatchNorms joins them: its mask is recomputed from the input rather than read from memory; so
does a residual block's shortcut add before it (``relu(bn(x) + residual)``), whose gradient is the masked one.
The variables, their names and the statistics are Flax's (mean and ``mean(x^2) - mean^2`` in float32, the same
running averages), so checkpoints, pretrained weights and exports are unchanged.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any


def _statistics(x, axes):
    """Flax's fast batch statistics: the mean and ``max(0, mean(x^2) - mean^2)``, in float32."""
    x = x.astype(jnp.float32)
    mean = x.mean(axes)
    return mean, jnp.maximum(0.0, (x * x).mean(axes) - mean * mean)


def _normalized(x, mean, multiplier, bias, residual):
    """The normalized ``x``, plus ``residual`` (in float32) where there is one."""
    y = (x - mean) * multiplier + bias
    return y if residual is None else y + residual.astype(jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def batch_norm_train(x, scale, bias, residual, epsilon: float, relu: bool):
    """``(relu of) (x - mean) / sqrt(var + epsilon) * scale + bias (+ residual)`` with the statistics of ``x``
    over every axis but the last, in float32; returns the output and the (mean, var) for the running averages.
    ``residual`` is None or an array of ``x``'s shape."""
    out, (mean, var), _ = _forward(x, scale, bias, residual, epsilon, relu)
    return out, (mean, var)


def _forward(x, scale, bias, residual, epsilon, relu):
    axes = tuple(range(x.ndim - 1))
    mean, var = _statistics(x, axes)
    rstd = lax.rsqrt(var + epsilon)
    multiplier = rstd * scale
    out = _normalized(x, mean, multiplier, bias, residual)
    out = jnp.maximum(out, 0.0) if relu else out
    return out, (mean, var), (x, mean, rstd, multiplier, bias, residual)


def _forward_rule(x, scale, bias, residual, epsilon, relu):
    out, stats, residuals = _forward(x, scale, bias, residual, epsilon, relu)
    return (out, stats), residuals


def _backward_rule(epsilon, relu, residuals, cotangents):
    del epsilon
    x, mean, rstd, multiplier, bias, residual = residuals
    grad = cotangents[0].astype(jnp.float32)  # the statistics' cotangents: they only feed the running averages
    axes = tuple(range(x.ndim - 1))
    if relu:  # the mask recomputed from x (and the residual), as the forward pass computed it
        grad = jnp.where(_normalized(x, mean, multiplier, bias, residual) > 0, grad, 0.0)
    grad_residual = None if residual is None else grad.astype(residual.dtype)
    # Every term per channel or elementwise in (x, grad): no normalized copy of x is written to memory.
    grad_bias = grad.sum(axes)
    grad_scale = rstd * ((grad * x).sum(axes) - mean * grad_bias)
    count = math.prod(x.shape[:-1])
    slope = multiplier * rstd * grad_scale / count
    grad_x = multiplier * grad - slope * x + (slope * mean - multiplier * grad_bias / count)
    return grad_x.astype(x.dtype), grad_scale, grad_bias, grad_residual


batch_norm_train.defvjp(_forward_rule, _backward_rule)


class BatchNorm(nn.Module):
    """``nn.BatchNorm`` over the last axis (same fields, variables and statistics), plus ``residual`` if one is
    given, then a ReLU if ``relu``.

    Training uses ``batch_norm_train`` (the gradient written out); evaluation, the running averages.
    """
    use_running_average: Optional[bool] = None
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Optional[Dtype] = None
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Callable = nn.initializers.zeros
    scale_init: Callable = nn.initializers.ones
    relu: bool = False

    @nn.compact
    def __call__(self, x, use_running_average: Optional[bool] = None, residual=None):
        use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
        scale = (self.param("scale", self.scale_init, features, jnp.float32) if self.use_scale
                 else jnp.ones(features, jnp.float32))
        bias = (self.param("bias", self.bias_init, features, jnp.float32) if self.use_bias
                else jnp.zeros(features, jnp.float32))
        dtype = self.dtype or jnp.result_type(x, jnp.float32)
        if residual is not None and residual.shape != x.shape:
            raise ValueError(f"BatchNorm's residual has shape {residual.shape}, its input {x.shape}: "
                             "the shortcut must match the normalized branch")
        if use_running_average:  # jax.nn.relu itself here: interpretation methods rewrite its gradient
            multiplier = lax.rsqrt(ra_var.value + self.epsilon) * scale
            y = _normalized(x, ra_mean.value, multiplier, bias, residual)
            return (nn.relu(y) if self.relu else y).astype(dtype)
        out, (mean, var) = batch_norm_train(x, scale, bias, residual, self.epsilon, self.relu)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return out.astype(dtype)
