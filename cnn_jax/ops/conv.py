"""2-D convolution on NHWC images with HWIO kernels: the XLA op and a readable reference."""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax._src import config as jax_config

from cnn_jax.ops import arithmetic
from cnn_jax.ops import onednn
from cnn_jax.ops import padding as padding_lib
from cnn_jax.ops import pooling

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
# Tracing-time switches, part of jit's cache key (as JAX's own config options are: the one private JAX API used
# here), so a function jitted and called before is traced again within them rather than reusing its trace.
_XLA_ONLY = jax_config.bool_state("cnn_jax_conv_xla_only", False, help="trace ops.conv2d to XLA's convolution",
                                  include_in_jit_key=True, include_in_trace_context=True)
_UNFUSED = jax_config.bool_state("cnn_jax_conv_unfused", False, help="layers keep convolution epilogues apart",
                                 include_in_jit_key=True, include_in_trace_context=True)


def xla_only():
    """Within it, ``conv2d`` traces to ``lax.conv_general_dilated`` alone: no oneDNN custom call and no
    ``platform_dependent`` branch, so a lowered graph is portable (``cnn_jax.export`` traces under it)."""
    return _XLA_ONLY(True)


def unfused():
    """Within it, ``fuses_epilogues()`` is False: layers compute a convolution's epilogue (evaluation's BatchNorm,
    residual add, ``jax.nn.relu``) as separate modules and ops, so a traced program shows every module's output and
    every ReLU call to the rewrites of ``cnn_jax.interpret``."""
    return _UNFUSED(True)


def _check(x, kernel, groups):
    if x.ndim != 4:
        raise ValueError(f"conv2d expects NHWC images of rank 4, got shape {x.shape}; add a batch axis with x[None]")
    if kernel.ndim != 4:
        raise ValueError(f"conv2d expects an HWIO kernel of rank 4, got shape {kernel.shape}")
    channels, in_per_group, features = x.shape[-1], kernel.shape[2], kernel.shape[3]
    if channels % groups or features % groups:
        raise ValueError(f"groups={groups} must divide input channels ({channels}) and output features ({features})")
    if in_per_group * groups != channels:
        raise ValueError(
            f"kernel expects {in_per_group} input channels per group x {groups} groups = "
            f"{in_per_group * groups}, but the images have {channels}")


def _explicit_padding(x, kernel, stride, padding, dilation):
    strides = padding_lib.pair(stride, "stride")
    dilations = padding_lib.pair(dilation, "dilation")
    pads, mode = padding_lib.resolve(padding, x.shape[1:3], kernel.shape[:2], strides, dilations)
    padding_lib.check_fits(x.shape[1:3], kernel.shape[:2], strides, dilations, pads)
    return strides, dilations, pads, mode


_NO_PADS = ((0, 0), (0, 0))


def _wrap_first(x, pads, mode):
    """Circular padding done up front, leaving the convolution no padding; zero padding left to the kernel."""
    if mode == "wrap":
        return padding_lib.apply(x, pads, mode), _NO_PADS
    return x, pads


def _depthwise_shifted(x, kernel, strides, dilations, pads, mode):
    """Depthwise convolution (one input channel per group, a one-channel convolution included) as a sum of
    kh * kw shifted, scaled copies of the input.

    Elementwise work only: on CPU it runs 10-25x faster than XLA's grouped convolution forward and 3-10x
    faster through its gradients (MobileNet/EfficientNet shapes, measured in BENCHMARKS.md).
    """
    x = padding_lib.apply(x, pads, mode)
    (kh, kw), (sh, sw), (dh, dw) = kernel.shape[:2], strides, dilations
    out_h, out_w = arithmetic.conv_output_hw(x.shape[1:3], kernel.shape[:2], strides, _NO_PADS, dilations)
    y = None
    for i in range(kh):
        for j in range(kw):
            window = x[:, i * dh:i * dh + (out_h - 1) * sh + 1:sh, j * dw:j * dw + (out_w - 1) * sw + 1:sw, :]
            term = window * kernel[i, j, 0]
            y = term if y is None else y + term
    return y


def _xla_conv(x, kernel, strides, dilations, pads, mode, groups):
    x, pads = _wrap_first(x, pads, mode)
    return lax.conv_general_dilated(x, kernel, window_strides=strides, padding=pads, rhs_dilation=dilations,
                                    dimension_numbers=_DIMENSIONS, feature_group_count=groups)


def _onednn_conv(x, kernel, strides, dilations, pads, mode, groups):
    x, pads = _wrap_first(x, pads, mode)
    return onednn.conv2d(x, kernel, strides, pads, dilations, groups)


def _onednn_serves(dtype, pads) -> bool:
    """Float32 and bfloat16 convolutions (dense, grouped or depthwise; operands of one ``dtype``) with zero padding,
    on a CPU backend of one device; bfloat16 only where oneDNN has native bf16 kernels for this CPU (AVX-512 BF16
    or AMX).

    With several CPU devices (simulated ones, or a multi-process CPU run) XLA's convolution is used: XLA cannot
    partition a custom call, so a batch-sharded oneDNN call would gather the whole batch onto every device.
    """
    f32, bf16 = dtype == jnp.float32, dtype == jnp.bfloat16
    single_cpu = len(jax.devices("cpu")) == 1
    served = min(p for pair in pads for p in pair) >= 0 and single_cpu and (f32 or bf16) and onednn.available()
    return served and (f32 or onednn.bfloat16_native())


def conv2d(x: jnp.ndarray, kernel: jnp.ndarray, bias: Optional[jnp.ndarray] = None, *,
           stride=1, padding: padding_lib.PaddingLike = "SAME", dilation=1, groups: int = 1) -> jnp.ndarray:
    """Cross-correlation of ``x`` (N, H, W, C) with ``kernel`` (kh, kw, C // groups, F), plus ``bias`` (F,).

    Output spatial sizes are ``conv_output_size(n, k, stride, padding, dilation)``. ``groups == C``
    gives a depthwise convolution. Runs on ``lax.conv_general_dilated``; "CIRCULAR" pads by wrapping first.
    On CPU two cases leave XLA, each for the much faster path measured in BENCHMARKS.md: float32 and bfloat16
    convolutions run on oneDNN's kernels (``cnn_jax.ops.onednn``; XLA's weight gradient is 3-5x slower, its grouped
    ones far slower still; bfloat16 where the CPU has bf16 instructions), and other depthwise ones (several CPU
    devices, bfloat16 without them) lower to shifted multiply-adds.
    Other backends keep XLA's convolution.
    """
    _check(x, kernel, groups)
    strides, dilations, pads, mode = _explicit_padding(x, kernel, stride, padding, dilation)
    kernel = kernel.astype(x.dtype)
    xla = functools.partial(_xla_conv, strides=strides, dilations=dilations, pads=pads, mode=mode, groups=groups)
    if _XLA_ONLY.value:
        y = xla(x, kernel)
    elif _onednn_serves(x.dtype, pads):
        on_onednn = functools.partial(_onednn_conv, strides=strides, dilations=dilations, pads=pads, mode=mode,
                                      groups=groups)
        y = lax.platform_dependent(x, kernel, cpu=on_onednn, default=xla)
    elif groups > 1 and groups == x.shape[-1] == kernel.shape[-1]:
        shifted = functools.partial(_depthwise_shifted, strides=strides, dilations=dilations, pads=pads, mode=mode)
        y = lax.platform_dependent(x, kernel, cpu=shifted, default=xla)
    else:
        y = xla(x, kernel)
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y


_ACTIVATIONS = {None: lambda y: y, "relu": jax.nn.relu, "relu6": jax.nn.relu6}


def fuses_epilogues(dtype) -> bool:
    """Whether ``conv2d_epilogue`` on ``dtype`` operands runs as one oneDNN kernel here (float32, or bfloat16 with
    native bf16 instructions, on one CPU device, outside ``xla_only`` and ``unfused``). Layers ask it before taking
    that path (``ConvBN``'s evaluation reads its BatchNorm as the kernel's scale and shift)."""
    return _fuses(jnp.dtype(dtype), _NO_PADS)


def _fuses(dtype, pads) -> bool:
    return not _XLA_ONLY.value and not _UNFUSED.value and _onednn_serves(dtype, pads)


def _epilogue_separately(x, kernel, scale, shift, residual, activation, *, stride, padding, dilation, groups):
    y = conv2d(x, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = (y * scale + shift).astype(x.dtype)
    return _ACTIVATIONS[activation](y if residual is None else y + residual)


@functools.partial(jax.custom_jvp, nondiff_argnums=(5, 6, 7, 8, 9))
def _epilogue_fused(x, kernel, scale, shift, residual, activation, stride, padding, dilation, groups):
    separately = functools.partial(_epilogue_separately, activation=activation, stride=stride, padding=padding,
                                   dilation=dilation, groups=groups)
    strides, dilations, pads, mode = _explicit_padding(x, kernel, stride, padding, dilation)

    def on_onednn(x, kernel, scale, shift, residual):
        from cnn_jax.ops.onednn import primitive as onednn_primitive

        x, pads_left = _wrap_first(x, pads, mode)
        out_h, out_w = arithmetic.conv_output_hw(x.shape[1:3], kernel.shape[:2], strides, pads_left, dilations)
        geometry = (tuple(strides), tuple(map(tuple, pads_left)), tuple(dilations), groups)
        return onednn_primitive.fused_forward(x, kernel, scale, shift, residual, geometry,
                                              (x.shape[0], out_h, out_w, kernel.shape[3]), activation)

    return lax.platform_dependent(x, kernel, scale, shift, residual, cpu=on_onednn, default=separately)


@_epilogue_fused.defjvp
def _epilogue_fused_jvp(activation, stride, padding, dilation, groups, primals, tangents):
    """The derivative of the same function written as separate ops (oneDNN convolutions and ``jax.nn`` activations);
    the primal output from the fused kernel."""
    separately = functools.partial(_epilogue_separately, activation=activation, stride=stride, padding=padding,
                                   dilation=dilation, groups=groups)
    _, tangent_out = jax.jvp(separately, primals, tangents)
    return _epilogue_fused(*primals, activation, stride, padding, dilation, groups), tangent_out


def conv2d_epilogue(x: jnp.ndarray, kernel: jnp.ndarray, scale: jnp.ndarray, shift: jnp.ndarray,
                    residual: Optional[jnp.ndarray] = None, activation: Optional[str] = None, *, stride=1,
                    padding: padding_lib.PaddingLike = "SAME", dilation=1, groups: int = 1) -> jnp.ndarray:
    """``activation(conv2d(x, kernel) * scale + shift + residual)``: ``scale`` and ``shift`` per output channel
    (float32), ``residual`` None or shaped as the output, ``activation`` None, "relu" or "relu6".

    Where ``fuses_epilogues`` holds, one oneDNN kernel computes it, the scale, shift, residual and activation
    applied as post-ops while each output tile is in cache: evaluation's conv -> BatchNorm -> (+ shortcut) -> ReLU
    in one pass over memory instead of two or three, the kernel used as it is. Its derivatives are those of the
    separate ops. Elsewhere it is those ops (``conv2d``, a multiply-add, ``jax.nn.relu``).
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown epilogue activation {activation!r}: use one of {tuple(_ACTIVATIONS)}")
    _check(x, kernel, groups)
    scale, shift = jnp.asarray(scale, jnp.float32), jnp.asarray(shift, jnp.float32)
    for name, vector in (("scale", scale), ("shift", shift)):
        if vector.shape != (kernel.shape[-1],):
            raise ValueError(f"the {name} has shape {vector.shape}; the kernel has {kernel.shape[-1]} output "
                             "features")
    kernel = kernel.astype(x.dtype)
    residual = None if residual is None else residual.astype(x.dtype)
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    if _fuses(x.dtype, _explicit_padding(x, kernel, stride, padding, dilation)[2]):
        return _epilogue_fused(x, kernel, scale, shift, residual, activation, *geometry.values())
    return _epilogue_separately(x, kernel, scale, shift, residual, activation, **geometry)


# When a one-channel convolution before a max pool runs as shifted multiply-adds: at most this many kernel taps
# (C * kh * kw) and a full-size map of at least this many bytes. simple_cnn's first layer, 1x3x3, took 0.6-0.9 ms
# with its pool at batch 128 where oneDNN and the pool took 0.9-1.6 ms, and its whole inference step ran
# 1.1-1.3x faster from batch 4 to 128 (0.8-1.3x at batch 2); at batch 1 (an 86 KB map, in cache either way) it ran 10-20 us slower, the
# oneDNN call after the XLA loop starting later; at 5x5 or 3 channels the loop ran 2-30x slower (2026-12-06).
_SHIFTED_TAPS = 9
_SHIFTED_MAP_BYTES = 128 * 1024


def conv2d_max_pool(x: jnp.ndarray, kernel: jnp.ndarray, bias: Optional[jnp.ndarray], window, *, stride=1,
                    padding: padding_lib.PaddingLike = "SAME", dilation=1, groups: int = 1) -> jnp.ndarray:
    """``max_pool(conv2d(x, kernel), window) + bias``: the convolution max-pooled in non-overlapping ``window``
    windows, its ``bias`` (None for none) added to the smaller pooled map, which is exact (the maximum commutes
    with adding a per-channel constant).

    A VALID stride-1 convolution computes only the outputs the windows read, not the ragged edge the pool drops.
    Where ``_shifted_pays`` (a 3x3 kernel on grayscale images, beyond batch 1) the convolution runs as shifted
    multiply-adds that XLA fuses with the pool into one loop on CPU, so the full-size map is never written; its
    derivative, and with it the forward of a differentiated (training) step, is that of the separate ops.
    """
    _check(x, kernel, groups)
    window = padding_lib.pair(window, "window")
    if isinstance(padding, str) and padding.upper() == "VALID" and padding_lib.pair(stride, "stride") == (1, 1):
        # input rows and columns beyond an output's
        reach = [d * (k - 1) for d, k in zip(padding_lib.pair(dilation, "dilation"), kernel.shape[:2])]
        x = x[:, :(x.shape[1] - reach[0]) // window[0] * window[0] + reach[0],
              :(x.shape[2] - reach[1]) // window[1] * window[1] + reach[1]]
    geometry = dict(window=window, stride=stride, padding=padding, dilation=dilation, groups=groups)
    kernel = kernel.astype(x.dtype)
    if _shifted_pays(x, kernel, stride, padding, dilation):
        return _pooled_shifted(x, kernel, bias, *geometry.values())
    return _conv_then_pool(x, kernel, bias, **geometry)


def _shifted_pays(x, kernel, stride, padding, dilation) -> bool:
    """A float32 one-channel convolution with at most ``_SHIFTED_TAPS`` taps and a full-size map of at least
    ``_SHIFTED_MAP_BYTES``, outside ``unfused()`` and ``xla_only()``."""
    if _XLA_ONLY.value or _UNFUSED.value or x.dtype != jnp.float32 or x.shape[-1] != 1:
        return False
    strides, dilations, pads, _ = _explicit_padding(x, kernel, stride, padding, dilation)
    out_h, out_w = arithmetic.conv_output_hw(x.shape[1:3], kernel.shape[:2], strides, pads, dilations)
    map_bytes = x.shape[0] * out_h * out_w * kernel.shape[3] * 4
    return kernel.shape[0] * kernel.shape[1] <= _SHIFTED_TAPS and map_bytes >= _SHIFTED_MAP_BYTES


def _conv_then_pool(x, kernel, bias, *, window, convolve=conv2d, **geometry):
    y = pooling.max_pool(convolve(x, kernel, **geometry), window)
    return y if bias is None else y + bias.astype(y.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5, 6, 7))
def _pooled_shifted(x, kernel, bias, window, stride, padding, dilation, groups):
    strides, dilations, pads, mode = _explicit_padding(x, kernel, stride, padding, dilation)
    # one input channel: each tap broadcasts over the output features
    shifted = functools.partial(_conv_then_pool, window=window, convolve=lambda x, kernel: _depthwise_shifted(
        x, kernel, strides, dilations, pads, mode))
    separately = functools.partial(_conv_then_pool, window=window, stride=stride, padding=padding,
                                   dilation=dilation, groups=groups)
    return lax.platform_dependent(x, kernel, bias, cpu=shifted, default=separately)


@_pooled_shifted.defjvp
def _pooled_shifted_jvp(window, stride, padding, dilation, groups, primals, tangents):
    """The separate ops' primal and derivative: a training step runs exactly the unfused forward."""
    separately = functools.partial(_conv_then_pool, window=window, stride=stride, padding=padding,
                                   dilation=dilation, groups=groups)
    return jax.jvp(separately, primals, tangents)


def conv2d_reference(x: jnp.ndarray, kernel: jnp.ndarray, bias: Optional[jnp.ndarray] = None, *,
                     stride=1, padding: padding_lib.PaddingLike = "SAME", dilation=1, groups: int = 1) -> jnp.ndarray:
    """``conv2d`` written out as im2col + matmul, without loops.

    Each output pixel gathers its receptive field (kh x kw x C values) into a row of a patch matrix;
    the convolution is then one matrix product per group of that matrix with the flattened kernel.
    """
    _check(x, kernel, groups)
    strides, dilations, pads, mode = _explicit_padding(x, kernel, stride, padding, dilation)
    x = padding_lib.apply(x, pads, mode)
    (kh, kw, in_per_group, features), (sh, sw), (dh, dw) = kernel.shape, strides, dilations
    out_h, out_w = arithmetic.conv_output_hw(x.shape[1:3], kernel.shape[:2], strides, _NO_PADS, dilations)
    rows = (jnp.arange(out_h) * sh)[:, None] + (jnp.arange(kh) * dh)[None, :]  # (out_h, kh)
    cols = (jnp.arange(out_w) * sw)[:, None] + (jnp.arange(kw) * dw)[None, :]  # (out_w, kw)
    patches = x[:, rows[:, None, :, None], cols[None, :, None, :], :]  # (N, out_h, out_w, kh, kw, C)
    n = x.shape[0]
    patches = patches.reshape(n, out_h, out_w, kh * kw, groups, in_per_group)
    patches = patches.transpose(0, 1, 2, 4, 3, 5).reshape(n * out_h * out_w, groups, kh * kw * in_per_group)
    weights = kernel.reshape(kh * kw * in_per_group, groups, features // groups).transpose(1, 0, 2)
    y = jnp.einsum("pgk,gkf->pgf", patches, weights.astype(x.dtype))  # one matmul per group
    y = y.reshape(n, out_h, out_w, features)
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y
