"""Every rule of the ONNX lowering (``onnx_lowering.RULES``) against onnxruntime, and JAX as the reference.

Each rule has small functions of a [batch, 9, 8, 4] image batch whose traced graph (``export.graph``) holds that
primitive on an image-dependent value (constants are folded away before lowering, so a rule is only reached where
the images flow). Each runs in onnxruntime at batch sizes 1 and 3: a graph that took the traced batch for a
constant, or a size-1 axis for the batch, fails at one of them. Integer and boolean results are compared exactly
(through a cast to float32), float ones within a few float32 roundings of the largest value.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime
import pytest
from jax import lax

from cnn_jax import ops
from cnn_jax.export import graph, onnx_lowering

SHAPE = (9, 8, 4)
RNG = np.random.default_rng(29)
C = RNG.normal(size=SHAPE[-1]).astype(np.float32)
K = RNG.normal(size=(3, 3, 4, 6)).astype(np.float32)
DEPTHWISE = RNG.normal(size=(3, 3, 1, 8)).astype(np.float32)
GROUPED = RNG.normal(size=(3, 3, 2, 6)).astype(np.float32)
W = RNG.normal(size=(9 * 8 * 4, 5)).astype(np.float32)
F32 = jnp.float32


def _bits(x):
    """The images as int32 in [0, 255]: integer operands for the integer forms of a rule."""
    return (x * 255).astype(jnp.int32)


def _as_float(*arrays):
    """Booleans and integers as float32 beside each other, so one output carries several results."""
    return jnp.concatenate([jnp.asarray(a).astype(F32) for a in arrays], axis=-1)


# rule -> functions of the images that reach it (each must, checked below).
CASES = {
    "add": [lambda x: x + C],
    "sub": [lambda x: C - x],
    "mul": [lambda x: x * C, lambda x: _as_float(_bits(x) * 3)],
    "div": [lambda x: x / (C * C + 1), lambda x: C / (x + 1),
            lambda x: _as_float(lax.div(_bits(x), 7), lax.div(-_bits(x), 7))],  # integers: rounded towards 0
    "max": [lambda x: jnp.maximum(x, 0.3), lambda x: _as_float(jnp.maximum(_bits(x), 100))],
    "min": [lambda x: jnp.minimum(x, 0.7)],
    "pow": [lambda x: jnp.power(x + 0.5, C)],
    "neg": [lambda x: -x],
    "exp": [lambda x: jnp.exp(-x)],
    "log": [lambda x: jnp.log(x + 0.01)],
    "tanh": [lambda x: jnp.tanh(x - 0.5)],
    "logistic": [lambda x: jax.nn.sigmoid(4 * x - 2)],
    "sqrt": [lambda x: jnp.sqrt(x)],
    "abs": [lambda x: jnp.abs(x - 0.5), lambda x: _as_float(jnp.abs(_bits(x) - 128))],
    "erf": [lambda x: lax.erf(4 * x - 2)],
    "sign": [lambda x: jnp.sign(jnp.floor(x * 3) - 1)],
    "floor": [lambda x: jnp.floor(8 * x - 4)],
    "ceil": [lambda x: jnp.ceil(8 * x - 4)],
    "gt": [lambda x: _as_float(x > 0.5, jnp.floor(4 * x) > 2)],
    "lt": [lambda x: _as_float(x < 0.5, jnp.floor(4 * x) < 2)],
    "ge": [lambda x: _as_float(jnp.floor(4 * x) >= 2)],  # ties: the floor makes equal values common
    "le": [lambda x: _as_float(jnp.floor(4 * x) <= 2)],
    "eq": [lambda x: _as_float(jnp.floor(4 * x) == 2, (_bits(x) & 3) == 0)],
    "copy": [lambda x: jnp.array(x, copy=True) * C],
    "and": [lambda x: _as_float((x > 0.3) & (x < 0.7), _bits(x) & 0xF0)],
    "or": [lambda x: _as_float((x < 0.3) | (x > 0.7), _bits(x) | 0x0F)],
    "not": [lambda x: _as_float(~(x > 0.5), ~_bits(x))],
    "reduce_sum": [lambda x: x.sum(axis=(1, 2))],
    "reduce_max": [lambda x: x.max(axis=(1, 2))],
    "reduce_min": [lambda x: x.min(axis=(1, 3))],
    "rsqrt": [lambda x: lax.rsqrt(x + 0.25)],
    "square": [lambda x: lax.square(x - C)],
    "integer_pow": [lambda x: x ** 3 + (x + 1) ** -2, lambda x: _as_float(_bits(x) ** 3)],
    "convert_element_type": [lambda x: _as_float((8 * x - 4).astype(jnp.int32), (x - 0.5).astype(bool))],
    "select_n": [lambda x: jnp.where(x > 0.5, x, -x),
                 lambda x: lax.select_n(jnp.floor(3 * x).astype(jnp.int32), x, 2 * x, -x)],
    "clamp": [lambda x: lax.clamp(np.float32(0.25), x, np.float32(0.75))],
    "conv_general_dilated": [
        lambda x: ops.conv2d(x, K, stride=2, padding="SAME"),
        lambda x: ops.conv2d(x, K, padding=((1, 2), (0, 1)), dilation=2),
        lambda x: ops.conv2d(x, DEPTHWISE, stride=2, groups=4),
        lambda x: ops.conv2d(x, GROUPED, groups=2),
        lambda x: ops.conv2d(x, x[0, :3, :3, :, None]),  # a kernel computed from the images
    ],
    "reduce_window_max": [lambda x: ops.max_pool(x, 3, stride=2, padding="SAME"),
                          lambda x: ops.max_pool(x, 2, stride=1, padding="VALID")],
    "dot_general": [lambda x: x.reshape(x.shape[0], -1) @ W, lambda x: jnp.einsum("bhwc,bhwd->bcd", x, x)],
    "reshape": [lambda x: x.reshape(x.shape[0], 4, -1)],
    "squeeze": [lambda x: jnp.squeeze(x[..., 1:2], -1)],
    "broadcast_in_dim": [
        lambda x: x * x.mean(axis=(1, 2))[:, None, None, :],  # per example
        lambda x: jnp.broadcast_to(x[:, :1], x.shape) - x,  # within an example
        lambda x: jnp.concatenate([x, jnp.full_like(x, 0.5)], axis=-1),  # a constant along the batch axis
    ],
    "transpose": [lambda x: jnp.transpose(x, (0, 3, 1, 2))],
    "slice": [lambda x: x[:, 1:8:2, ::3, 1:]],
    "pad": [lambda x: jnp.pad(x, ((0, 0), (1, 2), (0, 3), (2, 0)), constant_values=0.5),
            lambda x: lax.pad(x, x[0, 0, 0, 0], ((0, 0, 0), (1, 0, 0), (0, 2, 0), (0, 0, 0)))],
    "concatenate": [lambda x: jnp.concatenate([x, 2 * x[..., :2]], axis=-1)],
}
CASE_IDS = [(rule, i) for rule in sorted(CASES) for i in range(len(CASES[rule]))]


def test_every_rule_has_cases_and_nothing_else_does():
    assert set(CASES) == set(onnx_lowering.RULES)


@pytest.mark.parametrize("rule,index", CASE_IDS, ids=[f"{rule}-{i}" for rule, i in CASE_IDS])
def test_each_rule_matches_jax_in_onnxruntime_at_two_batch_sizes(rule, index):
    function = CASES[rule][index]
    traced = graph.trace_function(function, SHAPE)
    assert rule in {eqn.primitive for eqn in traced.equations}, f"the case does not reach the {rule} rule"
    session = onnxruntime.InferenceSession(onnx_lowering.lower(traced).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = RNG.random((batch, *SHAPE), np.float32)
        with graph.portable():
            want = np.asarray(function(jnp.asarray(x)))
        (got,) = session.run(None, {"images": x})
        assert got.shape == want.shape and got.dtype == want.dtype, (batch, got.shape, want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=f"batch {batch}")


# The TFLite route (``tf_lowering``, run here as TF ops) on the cases that were mended in both lowerings: a constant
# broadcast along the batch axis, an int32 choice among three cases, an integer power of integers.
TF_CASES = [("broadcast_in_dim", 2), ("select_n", 1), ("integer_pow", 1)]


@pytest.mark.parametrize("rule,index", TF_CASES, ids=[f"{rule}-{i}" for rule, i in TF_CASES])
def test_the_tf_lowering_matches_jax_on_the_same_cases_at_two_batch_sizes(rule, index):
    from cnn_jax.export import tf_lowering

    function = CASES[rule][index]
    lowered = tf_lowering.lower(graph.trace_function(function, SHAPE))
    for batch in (1, 3):
        x = RNG.random((batch, *SHAPE), np.float32)
        with graph.portable():
            want = np.asarray(function(jnp.asarray(x)))
        got = lowered(x).numpy()
        assert got.shape == want.shape, (batch, got.shape, want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=f"batch {batch}")
