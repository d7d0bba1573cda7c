"""Evaluation with a layer's ops joined into one kernel: ``fused_apply(model)``.

In evaluation a ``ConvBN`` is ``activation(conv(x) * multiplier + shift + residual)``, its BatchNorm folded into a
per-channel ``multiplier`` and ``shift`` (``ops.fold_batch_norm``), and ``ops.conv2d_epilogue`` computes that as one
oneDNN convolution with post-ops: one pass over memory instead of two or three. The layers stay as written;
``fused_apply`` rewrites their evaluation through Flax's method interception, reading the variables that the
layer's ``conv`` and ``bn`` declared, wherever ``ops.fast.fuses_epilogue`` holds (kernel mode "fast", oneDNN on
this CPU). Everywhere else, in training, and at initialization, the layer runs as written.

The training engine applies models through it (``create_train_state``), and so do predict and the benchmarks;
``model.apply`` itself is the model as written, the function that ``cnn_jax.interpret`` and ``cnn_jax.export``
trace.
"""
from __future__ import annotations

import dataclasses
import inspect

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import ops
from cnn_jax.layers import ConvBN, padding_for
from cnn_jax.ops import fast

_EPILOGUES = {None: None, nn.relu: "relu", nn.relu6: "relu6"}  # the activations the kernel applies, by function
_CALL = inspect.signature(ConvBN.__call__)


def _convbn_in_one_kernel(next_fun, args, kwargs, context):
    module = context.module
    if not isinstance(module, ConvBN) or context.method_name != "__call__":
        return next_fun(*args, **kwargs)
    call = _CALL.bind(module, *args, **kwargs)
    call.apply_defaults()
    x, train, residual = call.arguments["x"], call.arguments["train"], call.arguments["residual"]
    if (train or module.is_initializing() or module.activation not in _EPILOGUES
            or not fast.fuses_epilogue(module.dtype)):
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
    """``model.apply``, with each evaluation-mode ``ConvBN`` computed as one kernel where the mode allows."""
    model: nn.Module

    def __call__(self, variables, *args, **kwargs):
        with nn.intercept_methods(_convbn_in_one_kernel):
            return self.model.apply(variables, *args, **kwargs)
