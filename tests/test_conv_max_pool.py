"""``ops.conv2d_max_pool``: equal to ``max_pool(conv2d(x, k), p) + bias`` on every path, its shifted path taken only
where it is meant to be, and its derivatives exactly those of the separate ops."""
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cnn_jax import ops
from cnn_jax.ops import conv as conv_module


def separately(x, kernel, bias, window, **geometry):
    y = ops.max_pool(ops.conv2d(x, kernel, **geometry), window)
    return y if bias is None else y + bias


@st.composite
def cases(draw):
    """Images, kernel, bias (or None), window and geometry; one or two input channels, so that one-channel 1x1,
    2x2 and 3x3 kernels take the shifted path and the rest the separate ops."""
    channels, kernel_size = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2, 3]))
    stride, dilation = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2]))
    padding, window = draw(st.sampled_from(["VALID", "SAME", 1])), draw(st.sampled_from([2, 3]))
    size = draw(st.integers(dilation * (kernel_size - 1) + stride * window, 18))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    x = jnp.asarray(rng.standard_normal((2, size, size + 1, channels)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((kernel_size, kernel_size, channels, 5)), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(5), jnp.float32) if draw(st.booleans()) else None
    return x, kernel, bias, window, dict(stride=stride, padding=padding, dilation=dilation)


@settings(max_examples=40, deadline=None)
@given(cases())
def test_equals_the_pool_of_the_convolution_plus_the_bias(case):
    """Exact on the separate ops; on the shifted path the products are summed in another order than oneDNN's, so
    float32 rounding of a sum of at most 9 unit-normal products: 1e-5 relative and absolute. The map-size bound is
    lifted so that these small maps take the shifted path too."""
    x, kernel, bias, window, geometry = case
    with mock.patch.object(conv_module, "_SHIFTED_MAP_BYTES", 0):  # read as the function is traced
        got = jax.jit(lambda x, k, b: ops.conv2d_max_pool(x, k, b, window, **geometry))(x, kernel, bias)
    np.testing.assert_allclose(got, separately(x, kernel, bias, window, **geometry), rtol=1e-5, atol=1e-5)


def convolves(f, *args) -> bool:
    """Whether ``f`` compiled for this CPU holds a convolution: XLA's, or the oneDNN custom call."""
    text = jax.jit(f).lower(*args).compile().as_text()
    return "convolution(" in text or "cnn_jax_conv" in text


X = jnp.asarray(np.random.default_rng(0).standard_normal((4, 28, 28, 1)), jnp.float32)
K = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 1, 16)), jnp.float32)  # a 173 KB map
B = jnp.linspace(-1.0, 1.0, 16, dtype=jnp.float32)


def pooled(x, k, b):
    return ops.conv2d_max_pool(x, k, b, 2, padding="VALID")


def test_a_one_channel_3x3_convolution_runs_as_shifted_multiply_adds_without_a_convolution_op():
    assert not convolves(pooled, X, K, B)


@pytest.mark.parametrize("variant", ["unfused", "xla_only", "bfloat16", "5x5", "two channels", "batch 1"])
def test_elsewhere_the_convolution_op_stays(variant):
    x, k, context = X, K, None
    if variant in ("unfused", "xla_only"):
        context = getattr(ops, variant)()
    elif variant == "bfloat16":
        x = X.astype(jnp.bfloat16)
    elif variant == "5x5":
        k = jnp.ones((5, 5, 1, 16), jnp.float32)
    elif variant == "batch 1":  # a 43 KB map
        x = X[:1]
    else:
        x, k = jnp.concatenate([X, X], axis=-1), jnp.ones((3, 3, 2, 16), jnp.float32)
    if context is None:
        assert convolves(pooled, x, k, B)
    else:
        with context:
            assert convolves(pooled, x, k, B)


def test_derivatives_and_the_differentiated_forward_are_the_separate_ops():
    """A training step differentiates the layer: its forward and gradients must be the unfused ones, bit for bit."""
    reference = lambda x, k, b: separately(x, k, b, 2, padding="VALID")
    cotangent = jnp.asarray(np.random.default_rng(2).standard_normal((4, 13, 13, 16)), jnp.float32)
    (out, vjp), (out_ref, vjp_ref) = jax.vjp(pooled, X, K, B), jax.vjp(reference, X, K, B)
    np.testing.assert_array_equal(out, out_ref)
    for got, expected in zip(vjp(cotangent), vjp_ref(cotangent)):
        np.testing.assert_array_equal(got, expected)
    tangents = (jnp.ones_like(X), jnp.ones_like(K), jnp.ones_like(B))
    np.testing.assert_array_equal(jax.jvp(pooled, (X, K, B), tangents)[1],
                                  jax.jvp(reference, (X, K, B), tangents)[1])


def test_vmap_over_an_extra_axis_equals_a_loop():
    xs = jnp.stack([X, -X, 2 * X])
    got = jax.jit(jax.vmap(pooled, in_axes=(0, None, None)))(xs, K, B)
    np.testing.assert_allclose(got, jnp.stack([pooled(x, K, B) for x in xs]), rtol=1e-6, atol=1e-6)


def test_without_a_bias_it_is_the_pool_of_the_convolution():
    np.testing.assert_allclose(pooled(X, K, None), separately(X, K, None, 2, padding="VALID"), rtol=1e-5, atol=1e-5)
