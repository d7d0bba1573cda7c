"""Property tests of ``cnn_jax.ops``.

Shapes against ``conv_output_size``; ``conv2d`` against its im2col reference, XLA's own SAME padding, jit, vmap
and finite-difference gradients; pools against a brute-force NumPy reference; equivariance to translations,
rotations and flips (f(g x) = g f(x), as the group-equivariant CNN literature, e.g. QUVA-Lab/escnn, tests it);
receptive fields against known stacks and against the support of a Jacobian.

Tolerances (float32, inputs ~ N(0, 1), kernels scaled by 1 / sqrt(fan_in) so outputs are O(1)):
``REORDERED`` for the same sums taken in another order (im2col vs XLA, a rotated input, jit vs eager);
``TRANSLATED`` for a translated input: none on CPU, where every output pixel is summed in the same order (circular
convs and pools commute exactly with ``roll``), ``REORDERED`` elsewhere (GPU conv algorithms work in tiles);
``GRADIENT`` for finite differences in float32 (central differences are exact for the bilinear conv, so only
rounding remains: ~1e-7 / eps).
"""
from __future__ import annotations

import functools
import itertools
from typing import NamedTuple
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import examples
from hypothesis import assume, given
from hypothesis import strategies as st
from jax import lax
from jax.test_util import check_grads

from cnn_jax import ops
from cnn_jax.ops import LayerGeometry, onednn
from cnn_jax.ops import padding as padding_lib

REORDERED = dict(rtol=1e-5, atol=1e-5)
TRANSLATED = dict(rtol=0, atol=0) if jax.default_backend() == "cpu" else REORDERED
GRADIENT = dict(eps=1e-2, atol=2e-3, rtol=2e-3)

pytestmark = pytest.mark.usefixtures("float32_precision")


def normal(seed, shape, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def along(spec, axis):
    """One axis of a 2-D spec: an int or a name applies to both axes, a tuple holds one entry per axis."""
    return spec[axis] if isinstance(spec, tuple) else spec


def low_high(padding, axis, size, kernel, stride, dilation=1):
    """Explicit (low, high) zeros of one axis, as the padding docstring defines them."""
    padding = along(padding, axis)
    if isinstance(padding, str):
        return (0, 0) if padding == "VALID" else ops.same_padding(size, kernel, stride, dilation)
    return (padding, padding) if isinstance(padding, int) else padding


class Case(NamedTuple):
    """One conv (or pool, with ``kernel_shape[:2]`` as the window) configuration."""
    x_shape: tuple
    kernel_shape: tuple
    stride: object
    padding: object
    dilation: object
    groups: int

    def kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def arrays(self, seed=0):
        fan_in = np.prod(self.kernel_shape[:3])
        return (normal(seed, self.x_shape), normal(seed + 1, self.kernel_shape, fan_in ** -0.5),
                normal(seed + 2, self.kernel_shape[-1:]))

    def output_shape(self):
        n, *sizes, _ = self.x_shape
        return (n, *(ops.conv_output_size(size, self.kernel_shape[a], along(self.stride, a), along(self.padding, a),
                                          along(self.dilation, a)) for a, size in enumerate(sizes)),
                self.kernel_shape[-1])


PADDINGS = st.one_of(
    st.sampled_from(["SAME", "VALID", "CIRCULAR"]),
    st.integers(0, 2),
    st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)), st.tuples(st.integers(0, 2), st.integers(0, 2))))


def int_or_pair(values):
    return st.one_of(values, st.tuples(values, values))


@st.composite
def cases(draw, dilated=True, grouped=True, paddings=PADDINGS):
    """Random kernel, stride, padding, dilation, groups and input size, the input just large enough to fit."""
    groups = draw(st.sampled_from([1, 2, 3])) if grouped else 1
    kernel = draw(st.tuples(st.integers(1, 4), st.integers(1, 4)))
    stride = draw(int_or_pair(st.integers(1, 3)))
    dilation = draw(int_or_pair(st.integers(1, 2))) if dilated else 1
    padding = draw(paddings)
    sizes = []
    for axis in range(2):
        effective = along(dilation, axis) * (kernel[axis] - 1) + 1
        wrapped_or_same = along(padding, axis) in ("SAME", "CIRCULAR")
        fits = 1 if wrapped_or_same else max(1, effective - sum(low_high(padding, axis, 1, 1, 1)))
        sizes.append(fits + draw(st.integers(0, 6)))
    in_per_group, out_per_group = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    batch = draw(st.integers(1, 2))
    return Case((batch, *sizes, groups * in_per_group), (*kernel, in_per_group, groups * out_per_group),
                stride, padding, dilation, groups)


# ---------------------------------------------------------------------------------------------- shapes

@given(cases())
def test_conv_shapes_follow_conv_output_size(case):
    x, kernel, bias = case.arrays()
    for conv in (ops.conv2d, ops.conv2d_reference):
        assert jax.eval_shape(functools.partial(conv, **case.kwargs()), x, kernel, bias).shape == case.output_shape()


@given(cases(dilated=False, grouped=False))
def test_pool_shapes_follow_conv_output_size(case):
    x = np.zeros(case.x_shape, np.float32)
    expected = case.output_shape()[:3] + case.x_shape[3:]
    window = case.kernel_shape[:2]
    pools = [lambda: ops.max_pool(x, window, case.stride, case.padding),
             lambda: ops.avg_pool(x, window, case.stride, case.padding),
             lambda: ops.avg_pool(x, window, case.stride, case.padding, count_include_pad=False)]
    for pool in pools:
        assert jax.eval_shape(pool).shape == expected


def test_pool_stride_defaults_to_window():
    x = jnp.zeros((1, 7, 9, 2))
    assert ops.max_pool(x, (2, 3)).shape == (1, 3, 3, 2)
    assert ops.avg_pool(x, 2).shape == (1, 3, 4, 2)


@pytest.mark.parametrize("size, kernel, stride, padding, dilation, expected", [
    (32, 3, 1, "SAME", 1, 32), (32, 3, 2, "SAME", 1, 16), (7, 4, 2, "SAME", 3, 4), (7, 5, 3, "CIRCULAR", 1, 3),
    (32, 3, 1, "VALID", 1, 30), (32, 3, 1, "valid", 2, 28), (224, 7, 2, 3, 1, 112), (224, 11, 4, 2, 1, 55),
    (8, 3, 2, (0, 1), 1, 4), (5, 5, 1, 0, 1, 1)])
def test_conv_output_size_known_values(size, kernel, stride, padding, dilation, expected):
    assert ops.conv_output_size(size, kernel, stride, padding, dilation) == expected


@pytest.mark.parametrize("size, kernel, padding, dilation", [
    (4, 5, 0, 1), (4, 5, "VALID", 1), (5, 3, 0, 3), (2, 7, (1, 2), 1)])
def test_conv_output_size_raises_when_the_kernel_does_not_fit(size, kernel, padding, dilation):
    with pytest.raises(ValueError, match="does not fit"):
        ops.conv_output_size(size, kernel, 1, padding, dilation)


@pytest.mark.parametrize("args, match", [
    ((0, 3), "positive"), ((5, 0), "positive"), ((5, 3, 0), "positive"), ((5, 3, 1, 0, 0), "positive"),
    ((5, 3, 1, "FULL"), "unknown padding")])
def test_conv_output_size_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        ops.conv_output_size(*args)


def test_conv_output_size_rejects_negative_padding():
    with pytest.raises(ValueError, match="non-negative"):
        ops.conv_output_size(5, 3, 1, -1)


# ------------------------------------------------------------------------------------- conv2d numerics

@given(cases())
def test_conv2d_matches_im2col_reference(case):
    x, kernel, bias = case.arrays()
    conv = jax.jit(lambda *a: ops.conv2d(*a, **case.kwargs()))
    reference = jax.jit(lambda *a: ops.conv2d_reference(*a, **case.kwargs()))
    np.testing.assert_allclose(conv(x, kernel, bias), reference(x, kernel, bias), **REORDERED)


@given(st.sampled_from([1, 3, 4, 5]), st.integers(1, 2),
       st.sampled_from(["SAME", "VALID", "CIRCULAR", 1, ((0, 2), (1, 0))]),
       st.integers(1, 2), st.integers(5, 9))
def test_depthwise_conv2d_matches_reference_with_gradients(kernel_size, stride, padding, dilation, size):
    """Depthwise convs, on oneDNN and on the shifted multiply-add path: values and both gradients equal im2col's."""
    channels = 5
    x = np.random.default_rng(size).normal(size=(2, size, size + 1, channels)).astype(np.float32)
    kernel = np.random.default_rng(0).normal(size=(kernel_size, kernel_size, 1, channels)).astype(np.float32)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=channels)
    assume((kernel_size - 1) * dilation + 1 <= size)
    def loss(conv):
        return jax.jit(jax.value_and_grad(lambda x, k: jnp.sum(jnp.sin(conv(x, k, **kwargs))), (0, 1)))
    expected, expected_grads = loss(ops.conv2d_reference)(x, kernel)
    with mock.patch.object(onednn, "available", lambda: False):  # the shifted path, which float32 skips with oneDNN
        shifted = loss(ops.conv2d)(x, kernel)
    for value, grads in (loss(ops.conv2d)(x, kernel), shifted):
        np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4)
        for grad, expected_grad in zip(grads, expected_grads):
            np.testing.assert_allclose(grad, expected_grad, **REORDERED)


def test_depthwise_conv2d_off_onednn_lowers_to_no_convolution_on_cpu():
    """Depthwise convolutions oneDNN does not serve (here bf16 on a CPU without bf16 kernels) become shifted
    multiply-adds, not XLA's conv."""
    x, kernel = jnp.zeros((1, 8, 8, 4), jnp.bfloat16), jnp.zeros((3, 3, 1, 4), jnp.bfloat16)
    with mock.patch.object(onednn, "bfloat16_native", lambda: False):
        text = jax.jit(lambda x, k: ops.conv2d(x, k, groups=4)).lower(x, kernel).as_text()
    assert "convolution" not in text and "cnn_jax_conv" not in text
    f32 = jax.jit(lambda x, k: ops.conv2d(x, k, groups=4)).lower(x.astype(jnp.float32), kernel.astype(jnp.float32))
    if onednn.available():
        assert "cnn_jax_conv" in f32.as_text()
    else:
        assert "convolution" not in f32.as_text()


@given(cases(paddings=st.just("SAME")))
def test_conv2d_same_padding_is_xlas_same_padding(case):
    x, kernel, _ = case.arrays()
    stride = tuple(along(case.stride, a) for a in range(2))
    dilation = tuple(along(case.dilation, a) for a in range(2))
    expected = lax.conv_general_dilated(x, kernel, stride, "SAME", rhs_dilation=dilation,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=case.groups)
    np.testing.assert_allclose(ops.conv2d(x, kernel, **case.kwargs()), expected, **REORDERED)


@examples(10)
@given(cases())
def test_conv2d_jit_matches_eager(case):
    x, kernel, bias = case.arrays()
    eager = ops.conv2d(x, kernel, bias, **case.kwargs())
    jitted = jax.jit(lambda *a: ops.conv2d(*a, **case.kwargs()))(x, kernel, bias)
    np.testing.assert_allclose(jitted, eager, **REORDERED)


GRAD_CASES = [
    Case((1, 5, 6, 4), (3, 2, 2, 4), (2, 1), "SAME", (1, 2), 2),
    Case((2, 6, 5, 3), (3, 3, 1, 3), 1, "CIRCULAR", 2, 3),
    Case((1, 7, 6, 2), (2, 3, 2, 3), 2, ((1, 0), (2, 1)), 1, 1),
]


@pytest.mark.parametrize("conv", [ops.conv2d, ops.conv2d_reference], ids=["conv2d", "reference"])
@pytest.mark.parametrize("case", GRAD_CASES, ids=["same-grouped-dilated", "circular-depthwise", "per-side"])
def test_conv_gradients_match_finite_differences(conv, case):
    f = jax.jit(lambda x, kernel, bias: conv(x, kernel, bias, **case.kwargs()))
    check_grads(f, case.arrays(), order=1, modes=("fwd", "rev"), **GRADIENT)


def test_conv2d_vmaps_over_extra_batch_axes():
    case = GRAD_CASES[0]
    x, kernel, bias = case.arrays()
    xs, kernels = np.stack([x, 2 * x + 1]), np.stack([kernel, -kernel, kernel ** 2])
    def conv(x, kernel):
        return ops.conv2d(x, kernel, bias, **case.kwargs())
    by_image = jax.vmap(conv, in_axes=(0, None))(xs, kernel)
    by_kernel = jax.vmap(conv, in_axes=(None, 0))(x, kernels)
    np.testing.assert_allclose(by_image, np.stack([conv(x, kernel) for x in xs]), **REORDERED)
    np.testing.assert_allclose(by_kernel, np.stack([conv(x, kernel) for kernel in kernels]), **REORDERED)


# ---------------------------------------------------------------------------------------------- pools

def brute_force_pools(x, window, stride, pads, circular):
    """max, mean counting padding, mean of in-image values: one window at a time, in NumPy."""
    width = ((0, 0), *pads, (0, 0))
    padded = np.pad(x, width, mode="wrap") if circular else np.pad(x, width, constant_values=np.nan)
    (wh, ww), (sh, sw) = window, stride
    rows = range(0, padded.shape[1] - wh + 1, sh)
    cols = range(0, padded.shape[2] - ww + 1, sw)
    patches = np.stack([np.stack([padded[:, i:i + wh, j:j + ww] for j in cols], 1) for i in rows], 1)
    return (np.nanmax(patches, axis=(3, 4)), np.nansum(patches, axis=(3, 4)) / (wh * ww),
            np.nanmean(patches, axis=(3, 4)))


@given(cases(dilated=False, grouped=False))
def test_pools_match_brute_force(case):
    x = normal(0, case.x_shape)
    window = case.kernel_shape[:2]
    stride = tuple(along(case.stride, a) for a in range(2))
    pads = tuple(low_high(case.padding, a, case.x_shape[1 + a], window[a], stride[a]) for a in range(2))
    # A window lying wholly in the padding has no in-image values to take the max or mean of.
    assume(all(lo < window[a] and hi < window[a] for a, (lo, hi) in enumerate(pads)))
    pools = jax.jit(lambda x: (ops.max_pool(x, window, stride, case.padding),
                               ops.avg_pool(x, window, stride, case.padding),
                               ops.avg_pool(x, window, stride, case.padding, count_include_pad=False)))
    maximum, mean_with_pad, mean_in_image = pools(x)
    expected = brute_force_pools(x, window, stride, pads, case.padding == "CIRCULAR")
    np.testing.assert_array_equal(maximum, expected[0])
    np.testing.assert_allclose(mean_with_pad, expected[1], **REORDERED)
    np.testing.assert_allclose(mean_in_image, expected[2], **REORDERED)


@pytest.mark.parametrize("shape, window", [((2, 8, 8, 3), 2), ((1, 7, 9, 2), (2, 3)), ((1, 5, 5, 1), 5),
                                           ((1, 11, 6, 2), 3)])
def test_tiled_fast_path_matches_reduce_window(shape, window):
    x = normal(0, shape)
    w = (window, window) if isinstance(window, int) else window
    def reduce(x, init, op):
        return lax.reduce_window(x, init, op, (1, *w, 1), (1, *w, 1), "VALID")
    np.testing.assert_array_equal(ops.max_pool(x, window), reduce(x, -jnp.inf, lax.max))
    np.testing.assert_allclose(ops.avg_pool(x, window), reduce(x, 0.0, lax.add) / (w[0] * w[1]), **REORDERED)
    grad = jax.grad(lambda x: jnp.sum(ops.max_pool(x, window) ** 2))(x)
    reference_grad = jax.grad(lambda x: jnp.sum(reduce(x, -jnp.inf, lax.max) ** 2))(x)
    np.testing.assert_allclose(grad, reference_grad, **REORDERED)


@pytest.mark.parametrize("window", [2, (2, 3), 3])
def test_tiled_max_pool_gradient_goes_to_the_first_maximum_of_ties(window):
    # Values from {0, 1, 2}: most windows hold a tied maximum. As lax.reduce_window's gradient (and PyTorch's and
    # Keras' max pooling), the whole cotangent goes to the first maximum in row-major order, none to the others.
    x = jnp.asarray(np.random.default_rng(1).integers(0, 3, (2, 6, 9, 3)), jnp.float32)
    w = (window, window) if isinstance(window, int) else window
    def reduce(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, *w, 1), (1, *w, 1), "VALID")
    cotangent = normal(2, reduce(x).shape)
    grad = jax.vjp(lambda x: ops.max_pool(x, window), x)[1](cotangent)[0]
    np.testing.assert_array_equal(grad, jax.vjp(reduce, x)[1](cotangent)[0])
    assert int((grad != 0).sum()) == cotangent.size  # one nonzero per window
    tangent = normal(3, x.shape)  # forward mode: the tangent of each window's first maximum
    np.testing.assert_array_equal(jax.jvp(lambda x: ops.max_pool(x, window), (x,), (tangent,))[1],
                                  jax.jvp(reduce, (x,), (tangent,))[1])


@pytest.mark.parametrize("window, stride, padding", [(3, 2, "SAME"), (3, 1, "VALID"), ((2, 3), (1, 2), "SAME"),
                                                     (2, 3, "VALID"), (2, 2, 1)])
def test_strided_max_pool_derivatives_are_reduce_windows_with_ties(window, stride, padding):
    """Overlapping (and gapped, and padded) max pools: values from {0, 1, 2}, so most windows hold a tied maximum;
    the written-out derivative gives lax.reduce_window's cotangents and tangents exactly."""
    x = jnp.asarray(np.random.default_rng(4).integers(0, 3, (2, 7, 9, 3)), jnp.float32)
    w = (window, window) if isinstance(window, int) else window
    s = (stride, stride) if isinstance(stride, int) else stride
    pads, _ = padding_lib.resolve(padding, x.shape[1:3], w, s)
    def reduce(x):
        return lax.reduce_window(jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf), -jnp.inf,
                                 lax.max, (1, *w, 1), (1, *s, 1), "VALID")
    def pool(x):
        return ops.max_pool(x, window, stride, padding)
    np.testing.assert_array_equal(pool(x), reduce(x))
    cotangent = normal(5, reduce(x).shape)
    np.testing.assert_array_equal(jax.vjp(pool, x)[1](cotangent)[0], jax.vjp(reduce, x)[1](cotangent)[0])
    tangent = normal(6, x.shape)
    np.testing.assert_array_equal(jax.jvp(pool, (x,), (tangent,))[1], jax.jvp(reduce, (x,), (tangent,))[1])


@pytest.mark.parametrize("window, stride, padding", [(2, 2, "VALID"), (3, 2, "SAME"), (3, 1, ((1, 0), (2, 1))),
                                                     (2, 1, "CIRCULAR")])
def test_pool_gradients_match_finite_differences(window, stride, padding):
    # Values 0.1 apart: the finite-difference steps never change which value of a window is the maximum.
    x = np.random.default_rng(0).permutation(2 * 6 * 7 * 2).reshape(2, 6, 7, 2).astype(np.float32) / 10
    for pool in (ops.max_pool, ops.avg_pool):
        check_grads(jax.jit(functools.partial(pool, window=window, stride=stride, padding=padding)), (x,), order=1,
                    modes=("fwd", "rev"),
                    **GRADIENT)
    check_grads(jax.jit(lambda x: ops.avg_pool(x, window, stride, padding, count_include_pad=False)), (x,), order=1,
                modes=("fwd", "rev"), **GRADIENT)


def test_global_pools():
    x = normal(0, (2, 3, 4, 5))
    np.testing.assert_allclose(ops.global_avg_pool(x), x.mean(axis=(1, 2)), **REORDERED)
    np.testing.assert_array_equal(ops.global_max_pool(x), x.max(axis=(1, 2)))
    assert ops.global_avg_pool(x, keepdims=True).shape == ops.global_max_pool(x, keepdims=True).shape == (2, 1, 1, 5)


# --------------------------------------------------------------------------------------------- errors

X, KERNEL = jnp.zeros((1, 6, 6, 4)), jnp.zeros((3, 3, 4, 8))


@pytest.mark.parametrize("call, match", [
    (lambda: ops.conv2d(X[0], KERNEL), "rank 4"),
    (lambda: ops.conv2d(X, KERNEL[0]), "rank 4"),
    (lambda: ops.conv2d(X, KERNEL, groups=3), "groups=3 must divide"),
    (lambda: ops.conv2d(X, jnp.zeros((3, 3, 4, 6)), groups=4), "groups=4 must divide"),
    (lambda: ops.conv2d(X, KERNEL, groups=2), "4 input channels per group x 2 groups"),
    (lambda: ops.conv2d(X, jnp.zeros((3, 3, 3, 8))), "the images have 4"),
    (lambda: ops.conv2d(X, KERNEL, padding="FULL"), "unknown padding"),
    (lambda: ops.conv2d_reference(X, KERNEL, padding="reflect"), "unknown padding"),
    (lambda: ops.conv2d(X, KERNEL, padding=-1), "non-negative"),
    (lambda: ops.conv2d(X, KERNEL, padding=(1, 1)), "is not a name"),
    (lambda: ops.conv2d(X, KERNEL, padding=((1, 1),)), "two non-negative"),
    (lambda: ops.conv2d(X, KERNEL, stride=0), "stride must be positive"),
    (lambda: ops.conv2d(X, KERNEL, dilation=(1, 2, 3)), "dilation must be an int or"),
    (lambda: ops.max_pool(X[0], 2), "rank 4"),
    (lambda: ops.avg_pool(X, 2, padding="full"), "unknown padding"),
    (lambda: ops.max_pool(X, 7), "does not fit"),
])
def test_ops_reject_bad_input_clearly(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call", [lambda: ops.conv2d(X, jnp.zeros((7, 7, 4, 8)), padding="VALID"),
                                  lambda: ops.conv2d_reference(X, jnp.zeros((7, 7, 4, 8)), padding="VALID"),
                                  lambda: ops.max_pool(X, 7, stride=1),
                                  lambda: ops.avg_pool(X, 8, stride=2)],
                         ids=["conv2d", "conv2d_reference", "max_pool", "avg_pool"])
def test_ops_raise_when_the_window_does_not_fit(call):
    with pytest.raises(ValueError):
        call()


# -------------------------------------------------------------------------------------- equivariance

def roll(x, shift):
    """``jnp.roll`` of the spatial axes, in NumPy (eager jnp ops would compile once per shape)."""
    return np.roll(x, shift, axis=(1, 2))


@given(cases(paddings=st.just("CIRCULAR")), st.tuples(st.integers(-4, 4), st.integers(-4, 4)))
def test_circular_conv_commutes_with_shifts_by_multiples_of_the_stride(case, blocks):
    """conv(roll(x, s * b)) = roll(conv(x), b); at stride 1, every integer translation."""
    stride = tuple(along(case.stride, a) for a in range(2))
    # Periodic inputs whose size is a multiple of the stride, so that output blocks tile the input torus.
    case = case._replace(x_shape=(case.x_shape[0], *(s * max(1, n // s) for n, s in zip(case.x_shape[1:3], stride)),
                                  case.x_shape[3]))
    x, kernel, bias = case.arrays()
    conv = jax.jit(lambda x: ops.conv2d(x, kernel, bias, **case.kwargs()))
    shift = tuple(b * s for b, s in zip(blocks, stride))
    np.testing.assert_allclose(conv(roll(x, shift)), roll(conv(x), blocks), **TRANSLATED)


@given(cases(dilated=False, grouped=False, paddings=st.sampled_from(["CIRCULAR", "VALID"])),
       st.tuples(st.integers(-3, 3), st.integers(-3, 3)))
def test_pools_commute_with_shifts_by_multiples_of_the_stride(case, blocks):
    window = case.kernel_shape[:2]
    # VALID pools are periodic only as non-overlapping tiles of the whole input.
    stride = window if case.padding == "VALID" else tuple(along(case.stride, a) for a in range(2))
    sizes = tuple(s * max(1, n // s) for n, s in zip(case.x_shape[1:3], stride))
    x = normal(0, (case.x_shape[0], *sizes, case.x_shape[3]))
    shift = tuple(b * s for b, s in zip(blocks, stride))
    for pool in (ops.max_pool, ops.avg_pool):
        f = jax.jit(functools.partial(pool, window=window, stride=stride, padding=case.padding))
        np.testing.assert_allclose(f(roll(x, shift)), roll(f(x), blocks), **TRANSLATED)


@examples(10)
@given(st.tuples(st.integers(1, 6), st.integers(1, 6)), st.tuples(st.integers(-7, 7), st.integers(-7, 7)))
def test_global_pools_are_translation_invariant(size, shift):
    x = normal(0, (2, *size, 3))
    pools = jax.jit(lambda x: (ops.global_avg_pool(x), ops.global_max_pool(x)))
    (avg, maximum), (shifted_avg, shifted_maximum) = pools(x), pools(roll(x, shift))
    np.testing.assert_allclose(shifted_avg, avg, **REORDERED)
    np.testing.assert_array_equal(shifted_maximum, maximum)


SYMMETRIES = {
    # name: (the transformation of NHWC images, the kernel average that is invariant under it)
    "rot90": (lambda x: np.rot90(x, 1, axes=(1, 2)),
              lambda k: sum(np.rot90(k, i, axes=(0, 1)) for i in range(4)) / 4),
    "flip_h": (lambda x: x[:, :, ::-1], lambda k: (k + k[:, ::-1]) / 2),
    "flip_v": (lambda x: x[:, ::-1], lambda k: (k + k[::-1]) / 2),
}


@given(kernel=st.sampled_from([1, 3, 5]), dilation=st.integers(1, 2), stride=st.integers(1, 2),
       blocks=st.integers(1, 4), padding=st.sampled_from(["SAME", "CIRCULAR"]))
def test_symmetric_kernels_commute_with_rotations_and_flips(kernel, dilation, stride, blocks, padding):
    size = stride * blocks + 1  # strided outputs sample pixels 0, s, ..., size - 1: a symmetric set
    x = normal(0, (1, size, size, 2))
    conv = jax.jit(lambda x, k: ops.conv2d(x, k, stride=stride, padding=padding, dilation=dilation))
    for transform, symmetrize in SYMMETRIES.values():
        k = symmetrize(normal(1, (kernel, kernel, 2, 3), 0.3))
        np.testing.assert_allclose(conv(transform(x), k), transform(conv(x, k)), **REORDERED)


def test_asymmetric_kernel_does_not_commute_with_rotation():
    """The property above is not vacuous: a generic kernel breaks it."""
    x, k = normal(0, (1, 5, 5, 2)), normal(1, (3, 3, 2, 3))
    rotate = SYMMETRIES["rot90"][0]
    assert not np.allclose(ops.conv2d(rotate(x), k), rotate(ops.conv2d(x, k)), **REORDERED)


# ---------------------------------------------------------------------------------- receptive fields

@pytest.mark.parametrize("layers, expected", [
    ([(3, 1)] * 2, (5, 1, 2.0)),
    ([LayerGeometry(3, 1, 1)] * 2, (5, 1, 0.0)),
    ([(7, 2, 3)], (7, 2, 0.0)),
    ([(3, 2, 1)] * 3, (15, 8, 0.0)),
    ([(3, 1, 0, 1), (3, 1, 0, 2), (3, 1, 0, 4)], (15, 1, 7.0)),  # Yu & Koltun 2016: 2^(i+2) - 1
    # VGG-16 through pool5 (Simonyan & Zisserman 2015): 212 pixels, jump 32 (Araujo et al., Distill 2019).
    ([(3, 1, 1)] * 2 + [(2, 2)] + [(3, 1, 1)] * 2 + [(2, 2)] + ([(3, 1, 1)] * 3 + [(2, 2)]) * 3, (212, 32, 15.5)),
])
def test_receptive_field_of_known_stacks(layers, expected):
    assert ops.receptive_field(layers) == expected


@st.composite
def stacks(draw):
    """1-4 conv or average-pool layers: (kind, LayerGeometry), padding below the (dilated) kernel."""
    layers = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "pool"]))
        kernel, stride = draw(st.integers(1, 4)), draw(st.integers(1, 2))
        dilation = draw(st.integers(1, 2)) if kind == "conv" else 1
        padding = draw(st.integers(0, dilation * (kernel - 1)))
        layers.append((kind, LayerGeometry(kernel, stride, padding, dilation)))
    return layers


def apply_stack(layers, x):
    """A linear stack with positive weights: every path from an input pixel to an output adds, none cancels."""
    for i, (kind, g) in enumerate(layers):
        if kind == "conv":
            kernel = jnp.asarray(np.random.default_rng(i).uniform(0.5, 1.5, (g.kernel, g.kernel, 1, 1)), x.dtype)
            x = ops.conv2d(x, kernel, stride=g.stride, padding=g.padding, dilation=g.dilation)
        else:
            x = ops.avg_pool(x, g.kernel, g.stride, g.padding)
    return x


def has_no_holes(geometries):
    """Whether the field is a full square: each layer's tap spacing (dilation x jump) never exceeds the field so far."""
    size, jump = 1, 1
    for g in geometries:
        if g.dilation * jump > size:
            return False
        size, jump = size + g.dilation * (g.kernel - 1) * jump, jump * g.stride
    return True


@given(stacks())
def test_receptive_field_is_the_support_of_the_jacobian(layers):
    """Output unit (i, j) depends only on input pixels in its field [start + i * jump -+ (size - 1) / 2], and, where
    that field lies in the image, on its outermost pixels, and on all of them when the field has no holes.

    (Near the border an inner layer's zero padding can hide part of the field, so only the bound holds there.)
    """
    geometries = [g for _, g in layers]
    n = 16
    try:
        out = n
        for g in geometries:
            out = ops.conv_output_size(out, g.kernel, g.stride, g.padding, g.dilation)
    except ValueError:
        assume(False)
    field = ops.receptive_field(geometries)
    jacobian = jax.jit(jax.jacfwd(lambda x: apply_stack(layers, x[None, :, :, None])[0, :, :, 0]))(np.zeros((n, n)))
    depends = np.asarray(jacobian) != 0  # (out, out, n, n)
    assert depends.shape[:2] == (out, out)
    centres = field.start + field.jump * np.arange(out)
    low, high = centres - (field.size - 1) / 2, centres + (field.size - 1) / 2
    inside = (low >= 0) & (high <= n - 1)
    assume(inside.any())
    contiguous = has_no_holes(geometries)
    for i, j in itertools.product(range(out), repeat=2):
        rows, cols = np.flatnonzero(depends[i, j].any(1)), np.flatnonzero(depends[i, j].any(0))
        if rows.size:
            assert low[i] <= rows[0] and rows[-1] <= high[i] and low[j] <= cols[0] and cols[-1] <= high[j]
        if inside[i] and inside[j]:
            assert (rows[0], rows[-1], cols[0], cols[-1]) == (low[i], high[i], low[j], high[j])
            if contiguous:  # with the bounds above: every pixel of the field
                assert depends[i, j].sum() == field.size ** 2


def test_count_params():
    tree = {"conv": {"kernel": jnp.zeros((3, 3, 4, 8)), "bias": jnp.zeros(8)}, "scale": np.ones(()), "empty": {}}
    assert ops.count_params(tree) == 3 * 3 * 4 * 8 + 8 + 1
    assert ops.count_params(jax.eval_shape(lambda: tree)) == 3 * 3 * 4 * 8 + 8 + 1


# --- patch whitening ---------------------------------------------------------------------------------------

@examples(20)
@given(st.integers(1, 3), st.integers(3, 7), st.integers(3, 7), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_image_patches_are_the_windows_in_kernel_order(size, height, width, channels, seed):
    images = np.random.default_rng(seed).normal(size=(2, height, width, channels)).astype(np.float32)
    patches = np.asarray(ops.image_patches(jnp.asarray(images), size))
    rows, cols = height - size + 1, width - size + 1
    expected = [images[n, r:r + size, c:c + size].ravel()
                for n in range(2) for r in range(rows) for c in range(cols)]
    np.testing.assert_array_equal(patches, np.stack(expected))


def _correlated_images(seed=0, n=64, size=12):
    """Images whose neighbouring pixels and channels correlate, as natural images' do."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(n, size + 1, size + 1, 3))
    smooth = noise[:, 1:, 1:] + 0.8 * noise[:, :-1, 1:] + 0.6 * noise[:, 1:, :-1]
    return (smooth @ np.array([[1.0, 0.5, 0.2], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])).astype(np.float32)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_whitening_kernel_gives_the_patches_identity_second_moments(size):
    images = jnp.asarray(_correlated_images())
    features = size * size * 3
    kernel = ops.patch_whitening_kernel(images, size, eps=0.0)
    assert kernel.shape == (size, size, 3, 2 * features)
    outputs = ops.conv2d(images, kernel, padding="VALID").reshape(-1, 2 * features)
    first, second = outputs[:, :features], outputs[:, features:]
    raw = ops.image_patches(images, size)
    assert np.abs(raw.T @ raw / len(raw) - np.eye(features)).max() > 0.3  # correlated before ...
    np.testing.assert_allclose(first.T @ first / len(first), np.eye(features), atol=2e-3)  # ... white after
    np.testing.assert_allclose(second, -first, atol=1e-6)


def test_whitening_eps_damps_the_weakest_components_most():
    images = jnp.asarray(_correlated_images(seed=1))
    raw = ops.image_patches(images, 2)
    eigenvalues = np.linalg.eigvalsh(np.asarray(raw.T @ raw / len(raw), np.float64))[::-1]
    eps = float(np.median(eigenvalues))
    outputs = ops.conv2d(images, ops.patch_whitening_kernel(images, 2, eps=eps), padding="VALID")
    first = outputs.reshape(-1, 24)[:, :12]
    moments = np.asarray(first.T @ first / len(first))
    np.testing.assert_allclose(np.diag(moments), eigenvalues / (eigenvalues + eps), rtol=2e-3)
    np.testing.assert_allclose(moments - np.diag(np.diag(moments)), 0.0, atol=2e-3)


@pytest.mark.parametrize("call,match", [
    (lambda: ops.image_patches(jnp.zeros((4, 4, 3)), 2), "rank 4"),
    (lambda: ops.patch_whitening_kernel(jnp.zeros((1, 4, 4, 3)), 5), r"patch size 5 must be in \[1, 4\]"),
])
def test_whitening_rejects_bad_input_clearly(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_receptive_field_takes_dicts_and_names_bad_layers():
    from cnn_jax.ops import LayerGeometry

    receptive_field = ops.receptive_field
    as_dicts = receptive_field([{"kernel": 3, "stride": 2, "padding": 1}, {"kernel": 3, "dilation": 2}])
    assert as_dicts == receptive_field([LayerGeometry(3, 2, 1), LayerGeometry(3, 1, 0, 2)])
    with pytest.raises(ValueError, match=r"layer 0 is \{'kernal': 3\}, not a layer geometry.*keys from kernel"):
        receptive_field([{"kernal": 3}])
    with pytest.raises(ValueError, match="layer 1 has stride=0: it must be an integer >= 1"):
        receptive_field([(3, 1), (3, 0)])
    with pytest.raises(ValueError, match="layer 0 has kernel='3'"):
        receptive_field([("3", 1)])
