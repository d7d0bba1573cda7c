"""The oneDNN convolution as a JAX primitive that jit, grad (any order), jvp and vmap all understand.

One primitive, three modes, all bilinear in their two operands (images NHWC, kernels HWIO):
forward ``F(x, w) -> y``, data gradient ``D(dy, w) -> dx`` and weight gradient ``W(x, dy) -> dw``.
They are the three partial derivatives of the trilinear form ``<F(x, w), dy>``, so each one's transpose
with respect to either operand is another of the three: reverse mode through a convolution runs on oneDNN's
backward kernels, and so do higher derivatives.

A second primitive, ``fused_p``, is the inference forward with an epilogue,
``act(F(x, w) * scale + shift [+ residual])``,
computed by the kernel as post-ops. It has no differentiation rules of its own: ``ops.conv2d_epilogue`` wraps it
in a ``custom_jvp`` whose derivative is that of the same function written as separate ops.

Both lower to oneDNN on the CPU and to XLA's convolution on every other platform: the kernel choices of
``ops.fast`` stage them in the CPU branch of ``lax.platform_dependent``, and a module lowered for the CPU and
another platform at once lowers every branch for every platform, although only the CPU runs that one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core
from jax.interpreters import ad, batching, mlir

from cnn_jax.ops.onednn import build

FORWARD, DATA_GRADIENT, WEIGHT_GRADIENT = 0, 1, 2

conv_p = core.Primitive("cnn_jax_onednn_conv")


def _bind(a, b, mode, shape, geometry):
    return conv_p.bind(a, b, mode=mode, shape=tuple(shape), geometry=geometry)


def forward(x, w, geometry, shape):
    """``y = F(x, w)`` of the given output shape; ``geometry`` = (strides, ((top, bottom), (left, right)), dilations,
    groups)."""
    return _bind(x, w, FORWARD, shape, geometry)


DTYPES = (jnp.float32, jnp.bfloat16)


def _abstract_eval(a, b, *, mode, shape, geometry):
    """The result has the operands' dtype (float32, or bfloat16 computed with float32 accumulation)."""
    if a.dtype != b.dtype or a.dtype not in DTYPES:
        raise TypeError(f"the oneDNN convolution takes two float32 or two bfloat16 operands, got {a.dtype} and "
                        f"{b.dtype}")
    return jax.core.ShapedArray(shape, a.dtype)


def _lower(a, b, *, mode, shape, geometry):
    if build.load() is None:
        raise RuntimeError("the oneDNN convolution kernel is not available; use ops.conv2d, which falls back to XLA")
    strides, pads, dilations, groups = geometry
    call = jax.ffi.ffi_call(build.TARGET, jax.ShapeDtypeStruct(shape, a.dtype))
    return call(a, b, mode=np.int64(mode), strides=np.asarray(strides, np.int64),
                padding=np.asarray([p for pair in pads for p in pair], np.int64),
                dilation=np.asarray(dilations, np.int64), groups=np.int64(groups))


def _shape(operand):
    return operand.aval.shape


# Transposes: ct is the cotangent of the output; each rule returns the cotangent of one operand.
def _transpose_a(ct, a, b, *, mode, shape, geometry):
    if mode == FORWARD:  # a = x, b = w
        return _bind(ct, b, DATA_GRADIENT, _shape(a), geometry)
    if mode == DATA_GRADIENT:  # a = dy, b = w, ct ~ x
        return _bind(ct, b, FORWARD, _shape(a), geometry)
    return _bind(b, ct, DATA_GRADIENT, _shape(a), geometry)  # a = x, b = dy, ct ~ w


def _transpose_b(ct, a, b, *, mode, shape, geometry):
    if mode == FORWARD:  # a = x, b = w
        return _bind(a, ct, WEIGHT_GRADIENT, _shape(b), geometry)
    if mode == DATA_GRADIENT:  # a = dy, b = w, ct ~ x
        return _bind(ct, a, WEIGHT_GRADIENT, _shape(b), geometry)
    return _bind(a, ct, FORWARD, _shape(b), geometry)  # a = x, b = dy, ct ~ w


def _batch(args, dims, *, mode, shape, geometry):
    """Folds a vmapped axis into the image batch where the kernel is shared; loops over it otherwise."""
    (a, b), (da, db) = args, dims
    if mode != WEIGHT_GRADIENT and db is None:
        a = jnp.moveaxis(a, da, 0)
        size = a.shape[0]
        folded = _bind(a.reshape((-1,) + a.shape[2:]), b, mode, (size * shape[0],) + shape[1:], geometry)
        return folded.reshape((size,) + shape), 0
    size = a.shape[da] if da is not None else b.shape[db]
    a = jnp.broadcast_to(a, (size,) + a.shape) if da is None else jnp.moveaxis(a, da, 0)
    b = jnp.broadcast_to(b, (size,) + b.shape) if db is None else jnp.moveaxis(b, db, 0)
    return jnp.stack([_bind(a[i], b[i], mode, shape, geometry) for i in range(size)]), 0


def _impl(a, b, **params):
    return jax.jit(lambda a, b: conv_p.bind(a, b, **params))(a, b)


conv_p.def_impl(_impl)
conv_p.def_abstract_eval(_abstract_eval)
ad.defbilinear(conv_p, _transpose_a, _transpose_b)
batching.primitive_batchers[conv_p] = _batch
mlir.register_lowering(conv_p, mlir.lower_fun(_lower, multiple_results=False), platform="cpu")

ACTIVATIONS = (None, "relu", "relu6")  # the epilogue's activation, by its index in the kernel's attribute

fused_p = core.Primitive("cnn_jax_onednn_conv_fused")


def fused_forward(x, w, scale, shift, residual, geometry, shape, activation):
    """``activation(F(x, w) * scale + shift (+ residual))`` of the given output shape; ``scale`` and ``shift``
    float32 (F,), ``residual`` None or shaped and typed as the output, ``activation`` one of ``ACTIVATIONS``."""
    operands = (x, w, scale, shift) + (() if residual is None else (residual,))
    return fused_p.bind(*operands, shape=tuple(shape), geometry=geometry, activation=activation)


def _fused_abstract_eval(x, w, scale, shift, *residual, shape, geometry, activation):
    _abstract_eval(x, w, mode=FORWARD, shape=shape, geometry=geometry)
    for name, vector in (("scale", scale), ("shift", shift)):
        if vector.dtype != jnp.float32 or vector.shape != (shape[-1],):
            raise TypeError(f"the fused convolution's {name} must be float32 of shape ({shape[-1]},), got "
                            f"{vector.dtype} {vector.shape}")
    if residual and (residual[0].shape != tuple(shape) or residual[0].dtype != x.dtype):
        raise TypeError(f"the fused convolution's residual must be {x.dtype} of shape {tuple(shape)}, got "
                        f"{residual[0].dtype} {residual[0].shape}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown epilogue activation {activation!r}: use one of {ACTIVATIONS}")
    return jax.core.ShapedArray(shape, x.dtype)


def _fused_lower(x, w, scale, shift, *residual, shape, geometry, activation):
    if build.load() is None:
        raise RuntimeError("the oneDNN convolution kernel is not available; use ops.conv2d_epilogue, which falls "
                           "back to XLA")
    strides, pads, dilations, groups = geometry
    call = jax.ffi.ffi_call(build.FUSED_TARGET, jax.ShapeDtypeStruct(shape, x.dtype))
    return call(x, w, scale, shift, *residual, strides=np.asarray(strides, np.int64),
                padding=np.asarray([p for pair in pads for p in pair], np.int64),
                dilation=np.asarray(dilations, np.int64), groups=np.int64(groups),
                residual=np.int64(len(residual)), activation=np.int64(ACTIVATIONS.index(activation)))


def _fused_batch(args, dims, *, shape, geometry, activation):
    """Folds a vmapped axis of the images (and residual) into the batch where kernel, scale and shift are shared;
    loops over it otherwise."""
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
    args = [a if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims, strict=True)]
    x, w, scale, shift, *residual = args
    x_dim, w_dim, scale_dim, shift_dim, *residual_dim = dims
    if w_dim is None and scale_dim is None and shift_dim is None:
        x = jnp.broadcast_to(x, (size,) + x.shape) if x_dim is None else x
        residual = [jnp.broadcast_to(r, (size,) + r.shape) if d is None else r
                    for r, d in zip(residual, residual_dim, strict=True)]
        folded = [a.reshape((-1,) + a.shape[2:]) for a in (x, *residual)]
        y = fused_p.bind(folded[0], w, scale, shift, *folded[1:], shape=(size * shape[0],) + tuple(shape[1:]),
                         geometry=geometry, activation=activation)
        return y.reshape((size,) + tuple(shape)), 0
    args = [jnp.broadcast_to(a, (size,) + a.shape) if d is None else a for a, d in zip(args, dims, strict=True)]
    rows = [fused_p.bind(*[a[i] for a in args], shape=shape, geometry=geometry, activation=activation)
            for i in range(size)]
    return jnp.stack(rows), 0


def _fused_impl(*args, **params):
    return jax.jit(lambda *args: fused_p.bind(*args, **params))(*args)


fused_p.def_impl(_fused_impl)
fused_p.def_abstract_eval(_fused_abstract_eval)
batching.primitive_batchers[fused_p] = _fused_batch
mlir.register_lowering(fused_p, mlir.lower_fun(_fused_lower, multiple_results=False), platform="cpu")


# --- every platform but the CPU: the same functions on XLA's convolution ------------------------------------------

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
_XLA_ACTIVATIONS = {None: lambda y: y, "relu": jax.nn.relu, "relu6": jax.nn.relu6}


def _xla_forward(x, w, geometry):
    strides, pads, dilations, groups = geometry
    return lax.conv_general_dilated(x, w, strides, [tuple(pair) for pair in pads], rhs_dilation=dilations,
                                    dimension_numbers=_DIMENSIONS, feature_group_count=groups)


def _xla_conv(a, b, *, mode, shape, geometry):
    if mode == FORWARD:
        return _xla_forward(a, b, geometry)
    zeros = jnp.zeros(shape, a.dtype)
    if mode == DATA_GRADIENT:  # a = dy, b = w
        return jax.vjp(lambda x: _xla_forward(x, b, geometry), zeros)[1](a)[0]
    return jax.vjp(lambda w: _xla_forward(a, w, geometry), zeros)[1](b)[0]  # a = x, b = dy


def _xla_fused(x, w, scale, shift, *residual, shape, geometry, activation):
    y = (_xla_forward(x, w, geometry) * scale + shift).astype(x.dtype)
    return _XLA_ACTIVATIONS[activation](y + residual[0] if residual else y)


mlir.register_lowering(conv_p, mlir.lower_fun(_xla_conv, multiple_results=False))
mlir.register_lowering(fused_p, mlir.lower_fun(_xla_fused, multiple_results=False))
