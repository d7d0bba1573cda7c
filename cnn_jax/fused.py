"""The engine's way to apply a model: ``fused_apply(model)``, ``model.apply`` with layers' ops joined in mode "fast".

The layers stay as written (the maths); ``fused_apply`` reruns two of them through Flax's method interception,
reading the variables the layer declared, where the kernel mode is "fast" (``ops.switch``):

- an evaluation-mode ``ConvBN`` is ``activation(conv(x) * multiplier + shift + residual)``, its BatchNorm folded
  into a per-channel ``multiplier`` and ``shift`` (``ops.fold_batch_norm``), which ``ops.conv2d_epilogue``
  computes as one oneDNN convolution with post-ops where ``ops.fast.fuses_epilogue`` holds: one pass over memory
  instead of two or three;
- a ``ConvPool`` with a max pool and a non-decreasing activation (which commutes with the maximum) is
  ``activation(ops.conv2d_max_pool(x))``, in training too: the bias and activation act on the pooled map, and a
  VALID convolution computes only the outputs the pool reads.

Everywhere else, and at initialization, the layer runs as written. The training engine applies models through it
(``create_train_state``), and so do predict and the benchmarks; ``model.apply`` itself is the model as written,
the function that ``cnn_jax.interpret`` and ``cnn_jax.export`` trace.
"""
from __future__ import annotations

import dataclasses
import inspect

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import ops
from cnn_jax.layers import ConvBN, ConvPool, padding_for
from cnn_jax.ops import fast, switch

_EPILOGUES = {None: None, nn.relu: "relu", nn.relu6: "relu6"}  # the activations the kernel applies, by function
_CALL = inspect.signature(ConvBN.__call__)
# Activations that never decrease, so that activation(max(...)) == max(activation(...)).
_NON_DECREASING = (nn.relu, nn.relu6, nn.tanh, nn.sigmoid, nn.elu, nn.leaky_relu)


def _fast_paths(next_fun, args, kwargs, context):
    """The interception rule: a layer this module rewrites goes to its rule, every other call runs as written."""
    module = context.module
    if context.method_name != "__call__" or module.is_initializing() or not switch.joins_ops():
        return next_fun(*args, **kwargs)
    if isinstance(module, ConvBN):
        return _convbn_in_one_kernel(module, next_fun, args, kwargs)
    if isinstance(module, ConvPool):
        return _conv_then_pool(module, next_fun, args, kwargs)
    return next_fun(*args, **kwargs)


def _conv_then_pool(module: ConvPool, next_fun, args, kwargs):
    if module.pool is not ops.max_pool or module.activation not in _NON_DECREASING:
        return next_fun(*args, **kwargs)
    (x,) = args
    params = module.variables["params"]
    bias = params["bias"].astype(module.dtype) if module.use_bias else None
    return module.activation(ops.conv2d_max_pool(
        x.astype(module.dtype), params["kernel"].astype(module.dtype), bias, module.window, stride=module.strides,
        padding=module.padding, dilation=module.dilation, groups=module.groups))


def _convbn_in_one_kernel(module: ConvBN, next_fun, args, kwargs):
    call = _CALL.bind(module, *args, **kwargs)
    call.apply_defaults()
    x, train, residual = call.arguments["x"], call.arguments["train"], call.arguments["residual"]
    if train or module.activation not in _EPILOGUES or not fast.fuses_epilogue(module.dtype):
        return next_fun(*args, **kwargs)
    params, stats = module.variables["params"], module.variables["batch_stats"]["bn"]
    scale = params["bn"]["scale"] if module.bn_use_scale else jnp.ones_like(params["bn"]["bias"])
    multiplier, shift = ops.fold_batch_norm(stats["mean"], stats["var"], scale, params["bn"]["bias"],
                                            module.bn_epsilon)
    if module.use_bias:
        shift = shift + params["conv"]["bias"] * multiplier
    return ops.conv2d_epilogue(x.astype(module.dtype), params["conv"]["kernel"].astype(module.dtype), multiplier,
                               shift, residual, _EPILOGUES[module.activation], stride=module.strides,
                               padding=padding_for(module.padding_mode, module.kernel_size, module.dilation),
                               dilation=module.dilation, groups=module.groups)


@dataclasses.dataclass(frozen=True)
class fused_apply:  # noqa: N801 -- a function to its callers; a value (equal for equal models) to jit
    """``model.apply``, with the layers' ops joined where the mode allows (the module docstring says which)."""
    model: nn.Module

    def __call__(self, variables, *args, **kwargs):
        with nn.intercept_methods(_fast_paths):
            return self.model.apply(variables, *args, **kwargs)
