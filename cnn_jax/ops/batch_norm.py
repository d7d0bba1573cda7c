"""Batch normalization as functions: the batch statistics, evaluation's affine map, and training's forward pass
with its gradient written out beside the plain version it must equal.

Differentiated by JAX, the plain training forward leaves XLA:CPU five to seven passes over each normalized
activation per training step (the statistics, the normalization, and the gradients of the mean, of the mean of
squares and of the normalization, each its own fusion). Written out (``batch_norm_train``'s VJP), a step needs
four: the statistics and the output forward; the two per-channel sums of the gradient and the input gradient
backward. The statistics are Flax's: the mean and ``mean(x^2) - mean^2``, in float32.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.ops import switch


def batch_statistics(x: jnp.ndarray):
    """The mean and variance (``max(0, mean(x^2) - mean^2)``, Flax's) over every axis but the last, in float32."""
    axes = tuple(range(x.ndim - 1))
    x = x.astype(jnp.float32)
    mean = x.mean(axes)
    return mean, jnp.maximum(0.0, (x * x).mean(axes) - mean * mean)


def fold_batch_norm(mean, var, scale, bias, epsilon: float):
    """The ``(multiplier, shift)`` with ``batch_norm(x, mean, var, scale, bias) == x * multiplier + shift``."""
    multiplier = lax.rsqrt(var + epsilon) * scale
    return multiplier, bias - mean * multiplier


def batch_norm(x, mean, var, scale, bias, epsilon: float) -> jnp.ndarray:
    """``(x - mean) / sqrt(var + epsilon) * scale + bias`` over the last axis, in float32: evaluation's BatchNorm,
    with the running averages as ``mean`` and ``var``."""
    return (x - mean) * (lax.rsqrt(var + epsilon) * scale) + bias


def batch_norm_train_reference(x, scale, bias, epsilon: float):
    """Training's BatchNorm, ``batch_norm`` with the statistics of ``x``; returns the output (float32) and the
    ``(mean, var)`` for the running averages. Its derivative is JAX's."""
    mean, var = batch_statistics(x)
    return batch_norm(x, mean, var, scale, bias, epsilon), (mean, var)


def batch_norm_train(x, scale, bias, epsilon: float):
    """``batch_norm_train_reference`` with its gradient written out (four passes per step, not five to seven),
    except in mode "portable", where it is the reference."""
    if not switch.custom_kernels():
        return batch_norm_train_reference(x, scale, bias, epsilon)
    return _by_hand(x, scale, bias, epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _by_hand(x, scale, bias, epsilon):
    return batch_norm_train_reference(x, scale, bias, epsilon)


def _forward_rule(x, scale, bias, epsilon):
    mean, var = batch_statistics(x)
    rstd = lax.rsqrt(var + epsilon)
    multiplier = rstd * scale
    out = (x - mean) * multiplier + bias
    return (out, (mean, var)), (x, mean, rstd, multiplier)


def _backward_rule(epsilon, residuals, cotangents):
    del epsilon
    x, mean, rstd, multiplier = residuals
    grad = cotangents[0].astype(jnp.float32)  # the statistics' cotangents only feed the running averages
    axes = tuple(range(x.ndim - 1))
    # Every term per channel or elementwise in (x, grad): no normalized copy of x is written to memory.
    grad_bias = grad.sum(axes)
    grad_scale = rstd * ((grad * x).sum(axes) - mean * grad_bias)
    count = math.prod(x.shape[:-1])
    slope = multiplier * rstd * grad_scale / count
    grad_x = multiplier * grad - slope * x + (slope * mean - multiplier * grad_bias / count)
    return grad_x.astype(x.dtype), grad_scale, grad_bias


_by_hand.defvjp(_forward_rule, _backward_rule)
