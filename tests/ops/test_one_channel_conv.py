"""A small one-channel convolution in kernel mode "fast": shifted multiply-adds that XLA fuses with the bias,
activation and pool after it (simple_cnn's first layer), equal to the convolution on every path, taken only where
it is meant to be, and differentiated exactly as the per-op convolution."""
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import examples
from hypothesis import given
from hypothesis import strategies as st

from cnn_jax import ops
from cnn_jax.ops import fast


@st.composite
def cases(draw):
    """Images and kernel with one input channel; 1x1, 2x2 and 3x3 kernels at every stride, dilation and padding."""
    kernel_size = draw(st.sampled_from([1, 2, 3]))
    stride, dilation = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2]))
    padding = draw(st.sampled_from(["VALID", "SAME", "CIRCULAR", 1]))
    size = draw(st.integers(dilation * (kernel_size - 1) + 1, 18))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    x = jnp.asarray(rng.standard_normal((2, size, size + 1, 1)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((kernel_size, kernel_size, 1, 5)), jnp.float32)
    return x, kernel, dict(stride=stride, padding=padding, dilation=dilation)


@examples(40)
@given(cases())
def test_equals_the_portable_convolution(case):
    """The products summed in another order than oneDNN's or XLA's: float32 rounding of a sum of at most 9
    unit-normal products, 1e-5 relative and absolute. The map-size bound is lifted so that these small maps take
    the shifted path too."""
    x, kernel, geometry = case
    with mock.patch.object(fast, "ONE_CHANNEL_MAP_BYTES", 0):  # read as the function is traced
        got = jax.jit(lambda x, k: ops.conv2d(x, k, **geometry))(x, kernel)
    with ops.kernels("portable"):
        want = ops.conv2d(x, kernel, **geometry)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def convolves(f, *args) -> bool:
    """Whether ``f`` compiled for this CPU holds a convolution: XLA's, or the oneDNN custom call."""
    text = jax.jit(f).lower(*args).compile().as_text()
    return "convolution(" in text or "cnn_jax_conv" in text


X = jnp.asarray(np.random.default_rng(0).standard_normal((4, 28, 28, 1)), jnp.float32)
K = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 1, 16)), jnp.float32)  # a 173 KB map
B = jnp.linspace(-1.0, 1.0, 16, dtype=jnp.float32)


def stage(x, k, b):
    """simple_cnn's stage: conv -> ReLU -> 2x2 max pool."""
    return ops.max_pool(jax.nn.relu(ops.conv2d(x, k, b, padding="VALID")), 2)


def test_a_one_channel_3x3_convolution_runs_as_shifted_multiply_adds_without_a_convolution_op():
    assert not convolves(stage, X, K, B)


def test_xla_fuses_the_stage_into_one_loop_that_never_writes_the_full_map():
    """The compiled stage needs no temporary buffer at all; in mode "separate" it holds the 26x26x16 map."""
    def temporary():
        return jax.jit(stage).lower(X, K, B).compile().memory_analysis().temp_size_in_bytes
    assert temporary() == 0
    with ops.kernels("separate"):
        assert temporary() >= 4 * 26 * 26 * 16 * 4


@pytest.mark.parametrize("variant", ["separate", "portable", "bfloat16", "5x5", "two channels", "batch 1"])
def test_elsewhere_the_convolution_op_stays(variant):
    x, k, mode = X, K, "fast"
    if variant in ("separate", "portable"):
        mode = variant
    elif variant == "bfloat16":
        x = X.astype(jnp.bfloat16)
    elif variant == "5x5":
        k = jnp.ones((5, 5, 1, 16), jnp.float32)
    elif variant == "batch 1":  # a 43 KB map
        x = X[:1]
    else:
        x, k = jnp.concatenate([X, X], axis=-1), jnp.ones((3, 3, 2, 16), jnp.float32)
    with ops.kernels(mode):
        assert convolves(stage, x, k, B)


def test_derivatives_and_the_differentiated_forward_are_the_per_op_convolution():
    """A training step differentiates the layer: its forward and gradients must be mode "separate"'s, bit for
    bit."""
    cotangent = jnp.asarray(np.random.default_rng(2).standard_normal((4, 13, 13, 16)), jnp.float32)
    out, vjp = jax.vjp(stage, X, K, B)
    with ops.kernels("separate"):
        out_ref, vjp_ref = jax.vjp(stage, X, K, B)
        expected = vjp_ref(cotangent)
    np.testing.assert_array_equal(out, out_ref)
    for got, want in zip(vjp(cotangent), expected):
        np.testing.assert_array_equal(got, want)
    tangents = (jnp.ones_like(X), jnp.ones_like(K), jnp.ones_like(B))
    got = jax.jvp(stage, (X, K, B), tangents)[1]
    with ops.kernels("separate"):
        want = jax.jvp(stage, (X, K, B), tangents)[1]
    np.testing.assert_array_equal(got, want)


def test_vmap_over_an_extra_axis_equals_a_loop():
    xs = jnp.stack([X, -X, 2 * X])
    got = jax.jit(jax.vmap(stage, in_axes=(0, None, None)))(xs, K, B)
    np.testing.assert_allclose(got, jnp.stack([stage(x, K, B) for x in xs]), rtol=1e-6, atol=1e-6)
