"""Every kernel choice of ``cnn_jax.ops`` and the kernels that join several ops: the fast paths, in one module.

``convolve`` is what ``ops.conv2d`` runs, chosen while tracing by the kernel mode (``ops.switch``), the dtype,
the device count and the shapes:

- XLA's convolution: in mode "portable", on several devices, and wherever nothing below applies;
- oneDNN's (``ops.onednn``): float32 and bfloat16 (where the CPU has bf16 instructions) on one CPU device, since
  XLA's CPU weight gradient is several times slower and its grouped convolutions far slower still;
- shifted multiply-adds for depthwise convolutions that oneDNN does not serve (several CPU devices, bfloat16
  without bf16 instructions), elementwise work that XLA:CPU runs far faster than its grouped convolution;
- in mode "fast", shifted multiply-adds for a small one-channel convolution with a large output map, which XLA
  fuses with what follows (bias, activation, pooling), so the map is never written; its derivative is the
  convolution's, so a training step runs the same ops as in mode "separate".

``conv2d_epilogue`` is conv -> per-channel scale and shift -> (+ residual) -> activation, one oneDNN kernel in mode
"fast" (evaluation's conv -> BatchNorm -> ReLU in one pass over memory), the separate ops elsewhere.
``conv2d_max_pool`` is conv -> max pool -> bias, which computes only the outputs the pool reads. A choice made
for the CPU falls back to XLA's convolution on other backends (``lax.platform_dependent``). The measurements
behind each choice are in BENCHMARKS.md.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.ops import arithmetic, onednn, pooling, switch
from cnn_jax.ops import padding as padding_lib
from cnn_jax.ops.checks import check_conv_operands
from cnn_jax.ops.geometry import NO_PADS, ConvGeometry, conv_geometry

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
# A one-channel convolution runs as shifted multiply-adds (mode "fast") with at most this many taps and an output
# map of at least this many bytes; below it the map stays in cache and oneDNN is as fast (BENCHMARKS.md,
# simple_cnn's first layer).
ONE_CHANNEL_TAPS = 9
ONE_CHANNEL_MAP_BYTES = 128 * 1024


def xla_conv(x, kernel, g: ConvGeometry):
    """``lax.conv_general_dilated``, circular padding applied first."""
    x, g = g.wrapped_first(x)
    return lax.conv_general_dilated(x, kernel, window_strides=g.strides, padding=g.pads, rhs_dilation=g.dilations,
                                    dimension_numbers=_DIMENSIONS, feature_group_count=g.groups)


def _onednn_conv(x, kernel, g: ConvGeometry):
    x, g = g.wrapped_first(x)
    return onednn.conv2d(x, kernel, g.strides, g.pads, g.dilations, g.groups)


def _shifted(x, kernel, g: ConvGeometry):
    """A convolution with one input channel per group (depthwise, or a one-channel input) as a sum of kh * kw
    shifted, scaled copies of the input: elementwise work only."""
    x = padding_lib.apply(x, g.pads, g.mode)
    (kh, kw), (sh, sw), (dh, dw) = kernel.shape[:2], g.strides, g.dilations
    out_h, out_w = arithmetic.conv_output_hw(x.shape[1:3], (kh, kw), g.strides, NO_PADS, g.dilations)
    y = None
    for i in range(kh):
        for j in range(kw):
            window = x[:, i * dh:i * dh + (out_h - 1) * sh + 1:sh, j * dw:j * dw + (out_w - 1) * sw + 1:sw, :]
            term = window * kernel[i, j, 0]
            y = term if y is None else y + term
    return y


def onednn_serves(dtype, g: ConvGeometry) -> bool:
    """Whether oneDNN computes a convolution of ``dtype`` operands with geometry ``g`` here: outside mode
    "portable", float32 (or bfloat16 with native bf16 instructions), zero padding, one CPU device. With several
    devices XLA's convolution runs: XLA cannot partition a custom call, so a batch-sharded oneDNN call would gather
    the whole batch onto every device."""
    f32, bf16 = dtype == jnp.float32, dtype == jnp.bfloat16
    if not switch.custom_kernels() or not (f32 or bf16) or min(p for pair in g.pads for p in pair) < 0:
        return False
    if len(jax.devices("cpu")) != 1 or not onednn.available():
        return False
    return f32 or onednn.bfloat16_native()


def fuses_epilogue(dtype) -> bool:
    """Whether ``conv2d_epilogue`` on ``dtype`` operands runs as one oneDNN kernel here (mode "fast", where oneDNN
    serves the convolution)."""
    return switch.joins_ops() and onednn_serves(jnp.dtype(dtype), ConvGeometry((1, 1), (1, 1), NO_PADS, "zeros", 1))


def _one_channel_shifted_pays(x, kernel, g: ConvGeometry) -> bool:
    """Mode "fast", a float32 one-channel convolution of at most ``ONE_CHANNEL_TAPS`` taps and an output map of at
    least ``ONE_CHANNEL_MAP_BYTES``."""
    if not switch.joins_ops() or x.dtype != jnp.float32 or x.shape[-1] != 1 or g.groups != 1:
        return False
    out_h, out_w = g.output_hw(x.shape[1:3], kernel.shape[:2])
    map_bytes = x.shape[0] * out_h * out_w * kernel.shape[3] * 4
    return kernel.shape[0] * kernel.shape[1] <= ONE_CHANNEL_TAPS and map_bytes >= ONE_CHANNEL_MAP_BYTES


def _per_op(x, kernel, g: ConvGeometry):
    """The convolution as one op, on the kernel its dtype and geometry choose."""
    if onednn_serves(x.dtype, g):
        return lax.platform_dependent(x, kernel, cpu=functools.partial(_onednn_conv, g=g),
                                      default=functools.partial(xla_conv, g=g))
    depthwise = g.groups > 1 and g.groups == x.shape[-1] == kernel.shape[-1]
    if depthwise and switch.custom_kernels():
        return lax.platform_dependent(x, kernel, cpu=functools.partial(_shifted, g=g),
                                      default=functools.partial(xla_conv, g=g))
    return xla_conv(x, kernel, g)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _one_channel_shifted(x, kernel, g: ConvGeometry):
    return lax.platform_dependent(x, kernel, cpu=functools.partial(_shifted, g=g),
                                  default=functools.partial(_per_op, g=g))


@_one_channel_shifted.defjvp
def _one_channel_shifted_jvp(g, primals, tangents):
    """The per-op convolution's value and derivative: a differentiated (training) step runs exactly its ops."""
    return jax.jvp(functools.partial(_per_op, g=g), primals, tangents)


def convolve(x: jnp.ndarray, kernel: jnp.ndarray, g: ConvGeometry) -> jnp.ndarray:
    """The convolution of ``x`` with ``kernel`` (of ``x``'s dtype), on the kernel chosen here."""
    if _one_channel_shifted_pays(x, kernel, g):
        return _one_channel_shifted(x, kernel, g)
    return _per_op(x, kernel, g)


_ACTIVATIONS = {None: lambda y: y, "relu": jax.nn.relu, "relu6": jax.nn.relu6}


def _epilogue_separately(x, kernel, scale, shift, residual, activation, g):
    y = (convolve(x, kernel, g) * scale + shift).astype(x.dtype)
    return _ACTIVATIONS[activation](y if residual is None else y + residual)


@functools.partial(jax.custom_jvp, nondiff_argnums=(5, 6))
def _epilogue_fused(x, kernel, scale, shift, residual, activation, g):
    separately = functools.partial(_epilogue_separately, activation=activation, g=g)

    def on_onednn(x, kernel, scale, shift, residual):
        from cnn_jax.ops.onednn import primitive

        x, wrapped = g.wrapped_first(x)
        out_h, out_w = wrapped.output_hw(x.shape[1:3], kernel.shape[:2])
        geometry = (tuple(wrapped.strides), tuple(map(tuple, wrapped.pads)), tuple(wrapped.dilations), g.groups)
        return primitive.fused_forward(x, kernel, scale, shift, residual, geometry,
                                       (x.shape[0], out_h, out_w, kernel.shape[3]), activation)

    return lax.platform_dependent(x, kernel, scale, shift, residual, cpu=on_onednn, default=separately)


@_epilogue_fused.defjvp
def _epilogue_fused_jvp(activation, g, primals, tangents):
    """The derivative of the separate ops; the value from the fused kernel."""
    separately = functools.partial(_epilogue_separately, activation=activation, g=g)
    _, tangent_out = jax.jvp(separately, primals, tangents)
    return _epilogue_fused(*primals, activation, g), tangent_out


def conv2d_epilogue(x: jnp.ndarray, kernel: jnp.ndarray, scale: jnp.ndarray, shift: jnp.ndarray,
                    residual: Optional[jnp.ndarray] = None, activation: Optional[str] = None, *, stride=1,
                    padding: padding_lib.PaddingLike = "SAME", dilation=1, groups: int = 1) -> jnp.ndarray:
    """``activation(conv2d(x, kernel) * scale + shift + residual)``: ``scale`` and ``shift`` per output channel
    (float32), ``residual`` None or shaped as the output, ``activation`` None, "relu" or "relu6".

    In mode "fast", where oneDNN serves the convolution, one oneDNN kernel computes it, the scale, shift, residual
    and activation applied as post-ops while each output tile is in cache; its derivatives are those of the
    separate ops. Elsewhere it is those ops (``conv2d``, a multiply-add, ``jax.nn.relu``).
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown epilogue activation {activation!r}: use one of {tuple(_ACTIVATIONS)}")
    check_conv_operands(x, kernel, groups)
    scale, shift = jnp.asarray(scale, jnp.float32), jnp.asarray(shift, jnp.float32)
    for name, vector in (("scale", scale), ("shift", shift)):
        if vector.shape != (kernel.shape[-1],):
            raise ValueError(f"the {name} has shape {vector.shape}; the kernel has {kernel.shape[-1]} output "
                             "features")
    kernel = kernel.astype(x.dtype)
    residual = None if residual is None else residual.astype(x.dtype)
    g = conv_geometry(x, kernel, stride, padding, dilation, groups)
    if fuses_epilogue(x.dtype) and onednn_serves(x.dtype, g):
        return _epilogue_fused(x, kernel, scale, shift, residual, activation, g)
    return _epilogue_separately(x, kernel, scale, shift, residual, activation, g)


def conv2d_max_pool(x: jnp.ndarray, kernel: jnp.ndarray, bias: Optional[jnp.ndarray], window: int, *,
                    stride=1, padding: padding_lib.PaddingLike = "SAME", dilation=1, groups: int = 1) -> jnp.ndarray:
    """``max_pool(conv2d(x, kernel, bias), window)`` over non-overlapping ``window`` x ``window`` patches, computed
    as ``max_pool(conv2d(x, kernel), window) + bias`` (exact: the maximum commutes with adding a per-channel
    constant), so the bias is added to the pooled map.

    A VALID stride-1 convolution is given only the input rows and columns that reach an output the pool reads: the
    ragged edge a floor-sized pool drops is never computed (a 13x13 map under a 3x3 kernel and a 2x2 pool: 10x10
    outputs, not 11x11). ``cnn_jax.fused`` runs a ``layers.ConvPool`` through it in mode "fast".
    """
    check_conv_operands(x, kernel, groups)
    g = conv_geometry(x, kernel, stride, padding, dilation, groups)
    if g.pads == NO_PADS and tuple(g.strides) == (1, 1):
        reach = [d * (k - 1) for d, k in zip(g.dilations, kernel.shape[:2])]
        x = x[:, :(x.shape[1] - reach[0]) // window * window + reach[0],
              :(x.shape[2] - reach[1]) // window * window + reach[1]]
    y = pooling.max_pool(convolve(x, kernel.astype(x.dtype), g), window)
    return y if bias is None else y + bias.astype(y.dtype)
