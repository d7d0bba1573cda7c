"""``ops.conv2d_max_pool`` (conv -> max pool -> bias, computing only the outputs the pool reads) against the
separate ops, and ``ConvPool`` run through it by ``cnn_jax.fused.fused_apply`` in mode "fast".

Tolerance: the same convolution sums, in the same kernel, on a cropped input: the outputs the pool reads are
computed by the same arithmetic, and adding a per-channel constant commutes exactly with the maximum (float
addition is monotone), so values and gradients agree to float32 rounding of the convolution (1e-5 relative).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cnn_jax import layers, ops
from cnn_jax.fused import fused_apply
from cnn_jax.models import get_model

RELATIVE = 1e-5


def separately(x, kernel, bias, window, **geometry):
    return ops.max_pool(ops.conv2d(x, kernel, bias, **geometry), window)


@given(size=st.integers(5, 14), kernel=st.sampled_from([1, 3, 5]), window=st.sampled_from([2, 3]),
       padding=st.sampled_from(["VALID", "SAME", 1]), channels=st.sampled_from([1, 3]),
       stride=st.sampled_from([1, 2]))
def test_conv2d_max_pool_is_the_pooled_convolution_with_its_gradients(size, kernel, window, padding, channels,
                                                                      stride):
    rng = np.random.default_rng(size * 100 + kernel)
    x = jnp.asarray(rng.standard_normal((2, size, size, channels)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, channels, 4)), jnp.float32)
    b = jnp.asarray(rng.standard_normal(4), jnp.float32)
    geometry = dict(stride=stride, padding=padding)
    assume(size + (2 if padding == 1 else 0) >= kernel)  # the kernel fits the padded input
    out = jax.eval_shape(lambda x, w: ops.conv2d(x, w, **geometry), x, w).shape[1]
    assume(out >= window)  # the pool's window fits the convolution's output

    @jax.jit  # one compilation per example for both functions, values and gradients
    def values_and_gradients(x, w, b):
        def run(f):
            def loss(*args):
                return (f(*args, window, **geometry) ** 2).sum()
            return jax.grad(loss, (0, 1, 2))(x, w, b), f(x, w, b, window, **geometry)
        return run(ops.conv2d_max_pool), run(separately)

    (grads, got), (want_grads, want) = values_and_gradients(x, w, b)
    np.testing.assert_allclose(got, want, atol=RELATIVE * float(jnp.abs(want).max()))
    for got_g, want_g in zip(grads, want_grads):
        np.testing.assert_allclose(got_g, want_g, atol=RELATIVE * float(jnp.abs(want_g).max()) + 1e-6)


def _conv_input_shapes(fn, *args):
    """The input shapes of every convolution (XLA's, or the oneDNN primitive) in ``fn``'s jaxpr and its inner ones
    (a ``cond`` holds a CPU branch and a default one, both with the same input)."""
    shapes = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated" or "onednn_conv" in eqn.primitive.name:
                shapes.append(tuple(eqn.invars[0].aval.shape))
            for param in eqn.params.values():
                for inner in param if isinstance(param, (tuple, list)) else (param,):
                    inner = getattr(inner, "jaxpr", inner)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return shapes


def test_simple_cnn_through_fused_apply_computes_only_what_its_pools_read():
    """simple_cnn's second convolution sees 13x13 maps; its 2x2 pool reads 10x10 of the 11x11 outputs. In mode
    "fast" fused_apply gives it the 12x12 input those need, and the logits are the model's as written."""
    model = get_model("simple_cnn", 10)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 28, 28, 1)), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    assert (4, 13, 13, 32) in _conv_input_shapes(model.apply, variables, x)
    fused_shapes = _conv_input_shapes(fused_apply(model), variables, x)
    assert (4, 12, 12, 32) in fused_shapes and (4, 13, 13, 32) not in fused_shapes
    want = model.apply(variables, x)
    np.testing.assert_allclose(fused_apply(model)(variables, x), want, atol=RELATIVE * float(jnp.abs(want).max()))
    with ops.kernels("separate"):  # the rule joins ops, so only mode "fast" runs it
        assert (4, 13, 13, 32) in _conv_input_shapes(fused_apply(model), variables, x)


@pytest.mark.parametrize("activation,pool,rewritten", [
    (jax.nn.relu, ops.max_pool, True), (jax.numpy.tanh, ops.max_pool, True),
    (jax.nn.gelu, ops.max_pool, False),  # not monotone: gelu(max) differs from max(gelu)
    (jax.nn.relu, ops.avg_pool, False)])
def test_conv_pool_is_rewritten_only_where_activation_and_maximum_commute(activation, pool, rewritten):
    layer = layers.ConvPool(8, 3, padding="VALID", activation=activation, pool=pool)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 9, 9, 3)), jnp.float32)
    variables = layer.init(jax.random.key(0), x)
    shapes = _conv_input_shapes(fused_apply(layer), variables, x)
    assert ((2, 8, 8, 3) in shapes) == rewritten and ((2, 9, 9, 3) in shapes) != rewritten
    want = layer.apply(variables, x)
    np.testing.assert_allclose(fused_apply(layer)(variables, x), want, atol=RELATIVE * float(jnp.abs(want).max()))
