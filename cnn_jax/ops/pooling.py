"""Spatial pooling on NHWC arrays.

Non-overlapping VALID windows (window == stride) take an elementwise path: the maximum (or sum) of the window's
strided views, one loop fusion on XLA:CPU, much faster than ``lax.reduce_window`` and its gradient (BENCHMARKS.md).
Max pooling's derivative is written out: each window's cotangent goes to its first maximum, in one pass, as in
``lax.reduce_window``'s own gradient. Other max pools (overlapping, padded) keep ``lax.reduce_window`` forward
with the same derivative written out over strided views. In kernel mode "portable" every max pool is
``lax.reduce_window`` with JAX's derivative: the reference the others equal, ties included.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.ops import padding as padding_lib
from cnn_jax.ops import switch


def _setup(x, window, stride, padding):
    if x.ndim != 4:
        raise ValueError(f"pooling expects NHWC arrays of rank 4, got shape {x.shape}")
    window = padding_lib.pair(window, "window")
    stride = window if stride is None else padding_lib.pair(stride, "stride")
    pads, mode = padding_lib.resolve(padding, x.shape[1:3], window, stride)
    padding_lib.check_fits(x.shape[1:3], window, stride, (1, 1), pads)
    return window, stride, pads, mode


def _window_views(x, window, stride=None):
    """The (N, OH, OW, C) strided view of each position (row-major) of the VALID ``window``s taken every ``stride``
    (default: ``window``) pixels over ``x``, a ragged edge dropped. Rank-4 slices, so exported graphs (TFLite: ops
    of rank 5 at most) take them as they are."""
    (wh, ww), (sh, sw), (_, h, w, _) = window, stride or window, x.shape
    oh, ow = (h - wh) // sh + 1, (w - ww) // sw + 1
    return [x[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw] for i in range(wh) for j in range(ww)]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _window_max(x, window):
    """Maximum of each non-overlapping window. Its derivative flows to the first maximum of each window only, as in
    ``lax.reduce_window``'s gradient and other frameworks' max pooling (``jnp.max`` would split it among ties, in
    three more passes over the input)."""
    return functools.reduce(jnp.maximum, _window_views(x, window))


def _tiles(x, window):
    """Crops the ragged edge and splits H and W into (blocks, window) axes."""
    (wh, ww), (n, h, w, c) = window, x.shape
    oh, ow = h // wh, w // ww
    return x[:, :oh * wh, :ow * ww].reshape(n, oh, wh, ow, ww, c)


def _first_maxima(views, top):
    """For each of a window's position views (row-major), True where it holds its window's first maximum ``top``."""
    seen = None
    for view in views:
        hit = view == top
        yield hit if seen is None else hit & ~seen
        seen = hit if seen is None else seen | hit


def _first_max(tiles, window, top):
    """Boolean array shaped like ``tiles``, True at the first (row-major) maximum of each window."""
    views = [tiles[:, :, i, :, j, :] for i in range(window[0]) for j in range(window[1])]
    masks = list(_first_maxima(views, top))
    rows = [jnp.stack(masks[i * window[1]:(i + 1) * window[1]], axis=3) for i in range(window[0])]
    return jnp.stack(rows, axis=2)


@_window_max.defjvp
def _window_max_jvp(window, primals, tangents):
    """On ``_tiles``' reshape, whose transpose is a reshape too: the backward pass scatters each window's cotangent
    in one fused pass (strided slices would transpose to one padded copy each)."""
    (x,), (tangent,) = primals, tangents
    top = _window_max(x, window)
    mask = _first_max(_tiles(x, window), window, top)
    return top, jnp.where(mask, _tiles(tangent, window), 0).sum(axis=(2, 4))


def _windows(x, window, stride, init, op):
    return lax.reduce_window(x, init, op, (1, *window, 1), (1, *stride, 1), "VALID")


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _strided_max(x, window, stride):
    """``lax.reduce_window``'s maximum over VALID windows (overlapping ones included), with its derivative written
    out as ``_window_max``'s: to each window's first maximum."""
    return _windows(x, window, stride, -jnp.inf, lax.max)


@_strided_max.defjvp
def _strided_max_jvp(window, stride, primals, tangents):
    """The sum over window positions of the tangent's strided view where that position holds the window's first
    maximum: elementwise passes whose transposes XLA adds in one loop, where ``lax.reduce_window``'s own gradient
    is a reduce-window over packed value-index pairs, several times slower (BENCHMARKS.md, resnet50's stem pool)."""
    (x,), (tangent,) = primals, tangents
    top = _strided_max(x, window, stride)
    masks = _first_maxima(_window_views(x, window, stride), top)
    return top, sum(jnp.where(mask, view, 0) for mask, view in zip(masks, _window_views(tangent, window, stride)))


def max_pool(x: jnp.ndarray, window, stride=None, padding: padding_lib.PaddingLike = "VALID") -> jnp.ndarray:
    """Maximum over ``window`` patches taken every ``stride`` (default: ``window``) pixels."""
    window, stride, pads, mode = _setup(x, window, stride, padding)
    if not switch.custom_kernels():
        return _windows(padding_lib.apply(x, pads, mode, value=-jnp.inf), window, stride, -jnp.inf, lax.max)
    if window == stride and pads == ((0, 0), (0, 0)):
        return _window_max(x, window)
    return _strided_max(padding_lib.apply(x, pads, mode, value=-jnp.inf), window, stride)


def avg_pool(x: jnp.ndarray, window, stride=None, padding: padding_lib.PaddingLike = "VALID",
             count_include_pad: bool = True) -> jnp.ndarray:
    """Mean over ``window`` patches; zero padding counts towards the mean unless ``count_include_pad=False``."""
    window, stride, pads, mode = _setup(x, window, stride, padding)
    if window == stride and pads == ((0, 0), (0, 0)):
        return functools.reduce(jnp.add, _window_views(x, window)) / (window[0] * window[1])
    padded = padding_lib.apply(x, pads, mode)
    sums = _windows(padded, window, stride, 0.0, lax.add)
    if count_include_pad or mode == "wrap":
        return sums / (window[0] * window[1])
    ones = padding_lib.apply(jnp.ones((1, *x.shape[1:3], 1), x.dtype), pads, mode)
    return sums / _windows(ones, window, stride, 0.0, lax.add)


def global_avg_pool(x: jnp.ndarray, keepdims: bool = False) -> jnp.ndarray:
    """Mean over height and width: (N, H, W, C) -> (N, C)."""
    return jnp.mean(x, axis=(1, 2), keepdims=keepdims)


def global_max_pool(x: jnp.ndarray, keepdims: bool = False) -> jnp.ndarray:
    """Maximum over height and width: (N, H, W, C) -> (N, C)."""
    return jnp.max(x, axis=(1, 2), keepdims=keepdims)
