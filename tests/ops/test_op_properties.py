"""Op properties on both sides of the dtype switch: translation equivariance of zero-padded convolutions away from
the border, and bfloat16 convolutions and pools within their roundings of float32.

Tolerances. float32: the same products summed, possibly in another order: ``REORDERED`` (1e-5 relative; a K-term
sum moves by about sqrt(K) * 2^-24 of its scale, under 1e-6 for the K <= 100 drawn). bfloat16 against itself
(translated): each output is a float32 sum rounded once to 8 significant bits, so two orders of the same sum end at
most one bfloat16 step apart: 2^-7 of the value. bfloat16 against float32: see
``test_bfloat16_convolution_is_float32_within_its_roundings``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import conv_geometries, examples
from hypothesis import assume, given
from hypothesis import strategies as st
from jax import lax

from cnn_jax import ops
from cnn_jax.ops import onednn

REORDERED = 1e-5
BFLOAT16_STEP = 2.0 ** -7
pytestmark = pytest.mark.usefixtures("float32_precision")
# bfloat16 convolutions are bounded as oneDNN's bf16 kernels compute them (exact products, float32 sums); elsewhere
# XLA's bfloat16 convolution runs, whose accumulation is its own.
needs_bfloat16 = pytest.mark.skipif(not (onednn.available() and onednn.bfloat16_native()),
                                    reason="no native oneDNN bf16 kernels on this CPU: the bfloat16 bounds are theirs")
DTYPES = [pytest.param("float32"), pytest.param("bfloat16", marks=needs_bfloat16)]


def operands(x_shape, kernel_shape, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal(kernel_shape) / np.sqrt(np.prod(kernel_shape[:3])), jnp.float32)
    return x, kernel


def within(actual, expected, relative):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(np.abs(expected).max(), 1e-6)
    assert np.abs(actual - expected).max() <= relative * scale, np.abs(actual - expected).max() / scale


def kept(size, out_size, kernel, stride, dilation, low, shift):
    """Output indices o whose window lies inside the image both where it is (o) and shifted by ``shift`` pixels
    (o + shift / stride): no padding and no wrapped pixel is read by either."""
    starts = np.arange(out_size) * stride - low
    span = (kernel - 1) * dilation
    return np.flatnonzero((starts >= 0) & (starts + span <= size - 1) & (starts + shift >= 0)
                           & (starts + shift + span <= size - 1))


SHIFTS = st.tuples(st.integers(-2, 2), st.integers(-2, 2)).filter(any)


@pytest.mark.parametrize("dtype", DTYPES)
@examples(15)
@given(conv_geometries(), SHIFTS)
def test_zero_padded_convolution_is_translation_equivariant_away_from_the_border(dtype, geometry, blocks):
    """conv(roll(x, s * t))[o + t] = conv(x)[o] wherever both windows lie inside the image: zero padding breaks
    equivariance at the border only."""
    x_shape, kernel_shape, strides, pads, dilations, groups = geometry
    x, kernel = operands(x_shape, kernel_shape)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    conv = jax.jit(lambda x: ops.conv2d(x, kernel, stride=strides, padding=pads, dilation=dilations, groups=groups))
    shift = tuple(t * s for t, s in zip(blocks, strides, strict=True))
    y, moved = np.asarray(conv(x), np.float64), np.asarray(conv(jnp.roll(x, shift, axis=(1, 2))), np.float64)
    rows, cols = (kept(x_shape[1 + a], y.shape[1 + a], kernel_shape[a], strides[a], dilations[a], pads[a][0],
                       shift[a]) for a in range(2))
    assume(rows.size and cols.size)
    within(moved[:, rows + blocks[0]][:, :, cols + blocks[1]], y[:, rows][:, :, cols],
           REORDERED if dtype == "float32" else BFLOAT16_STEP)


@needs_bfloat16
@examples(20)
@given(conv_geometries())
def test_bfloat16_convolution_is_float32_within_its_roundings(geometry):
    """|conv_bf16(x, w) - conv(x, w)| <= u |conv(x, w)| + 2 u M + 2 (K + 1) 2^-24 M, u = 2^-8, M = conv(|x|, |w|),
    K = kh * kw * C / G: the inputs and the kernel rounded to bfloat16 (u relative each: at most 2 u M through the
    sum), exact products summed in float32 (K terms), and the result rounded once (u |result|). The float32
    reference on the same inputs is within K 2^-24 M of exact."""
    x_shape, kernel_shape, strides, pads, dilations, groups = geometry
    x, kernel = operands(x_shape, kernel_shape)

    def conv(x, k):
        return ops.conv2d(x, k, stride=strides, padding=pads, dilation=dilations, groups=groups)

    got = jax.jit(conv)(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    want = np.asarray(jax.jit(conv)(x, kernel), np.float64)
    magnitude = np.asarray(jax.jit(conv)(jnp.abs(x), jnp.abs(kernel)), np.float64)
    u, terms = 2.0 ** -8, np.prod(kernel_shape[:3])
    bound = u * np.abs(want) + (2 * u + 2 * (terms + 1) * 2.0 ** -24) * magnitude
    excess = np.abs(np.asarray(got, np.float64) - want) - bound
    assert excess.max() <= 0, excess.max()


@examples(15)
@given(st.sampled_from([(2, 2, "VALID"), (3, 2, "SAME"), (3, 1, "VALID"), (2, 1, "CIRCULAR")]),
       st.integers(1, 3), st.integers(4, 9), st.integers(4, 9))
def test_bfloat16_pools_are_float32_pools_rounded(pool, batch, height, width):
    """On bfloat16 inputs the max pool is exactly the float32 max pool of the same values (a maximum rounds
    nothing); the average pool sums w = kh * kw values, each partial sum rounded (at most (w - 1) u of the
    window's absolute sum, u = 2^-8), then divides (one more u)."""
    window, stride, padding = pool
    x = jnp.asarray(np.random.default_rng(batch * height * width).standard_normal((batch, height, width, 3)),
                    jnp.bfloat16)
    up = x.astype(jnp.float32)
    maximum = jax.jit(lambda x: ops.max_pool(x, window, stride, padding))
    got = maximum(x)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32), maximum(up))
    average = jax.jit(lambda x: ops.avg_pool(x, window, stride, padding))
    u, w = 2.0 ** -8, window ** 2
    want = np.asarray(average(up), np.float64)
    bound = u * np.abs(want) + (w - 1) * u * np.asarray(average(jnp.abs(up)), np.float64)
    assert (np.abs(np.asarray(average(x), np.float64) - want) <= bound + 1e-30).all()


def test_zero_padding_breaks_translation_equivariance_at_the_border():
    """The property above is not vacuous: compared at every output, the zero-padded convolution of a shifted input
    differs at the border."""
    x, kernel = operands((1, 8, 8, 2), (3, 3, 2, 3))
    conv = jax.jit(lambda x: lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC")))
    assert not np.allclose(conv(jnp.roll(x, 1, axis=1)), jnp.roll(conv(x), 1, axis=1), atol=1e-3)
