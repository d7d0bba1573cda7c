"""The ONNX and TFLite lowerings (cnn_jax.export.onnx_lowering, tf_lowering), one primitive at a time, against JAX.

Each case is a small function of a [batch, H, W, C] input; its graph (``export.graph.trace_function``) is
lowered to ONNX (run by onnxruntime) and to TF ops (run eagerly: the ops TFLite converts one to one), and both
must match JAX at another batch size than any other case uses, so the dynamic batch is exercised too.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime
import pytest
from jax import lax

from cnn_jax import ops
from cnn_jax.export import graph, onnx_lowering, tf_lowering
from cnn_jax.ops import onednn

SHAPE = (9, 8, 4)
RNG = np.random.default_rng(0)
C = RNG.normal(size=SHAPE[-1]).astype(np.float32)
K = RNG.normal(size=(3, 3, 4, 6)).astype(np.float32)
DEPTHWISE = RNG.normal(size=(3, 3, 1, 8)).astype(np.float32)
GROUPED = RNG.normal(size=(3, 3, 2, 6)).astype(np.float32)
W = RNG.normal(size=(9 * 8 * 4, 5)).astype(np.float32)

CASES = {
    "add_sub_mul_div": lambda x: ((x + C) * C - C) / (C * C + 1),
    "max_min": lambda x: jnp.minimum(jnp.maximum(x, 0.2), 0.8),
    "unary": lambda x: jnp.tanh(x) + jax.nn.sigmoid(x) + jnp.exp(-x) - jnp.sqrt(jnp.abs(x)) + lax.rsqrt(x * x + 1),
    "integer_pow": lambda x: x ** 3 + x ** 2,
    "conv_same_stride2": lambda x: ops.conv2d(x, K, stride=2, padding="SAME"),
    "conv_valid_dilated": lambda x: ops.conv2d(x, K, padding="VALID", dilation=2),
    "conv_explicit_pad_bias": lambda x: ops.conv2d(x, K, C[:1].repeat(6), padding=((1, 2), (0, 1))),
    "conv_depthwise": lambda x: ops.conv2d(x, DEPTHWISE, stride=2, groups=4),
    "max_pool_padded": lambda x: ops.max_pool(x, 3, stride=2, padding="SAME"),
    "dense": lambda x: x.reshape(x.shape[0], -1) @ W,
    "transpose_reshape": lambda x: jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], 4, -1),
    "strided_slice": lambda x: x[:, 1:8:2, ::3, 1:],
    "pad": lambda x: jnp.pad(x, ((0, 0), (1, 2), (0, 3), (2, 0)), constant_values=0.5),
    "concatenate": lambda x: jnp.concatenate([x, 2 * x[..., :2]], axis=-1),
    "reductions": lambda x: x.sum(axis=(1, 2)) + x.max(axis=(1, 2)),
    "per_example_broadcast": lambda x: x * x.mean(axis=(1, 2))[:, None, None, :],
    "broadcast_within_example": lambda x: jnp.broadcast_to(x[:, :1], x.shape) - x,
    "where": lambda x: jnp.where(x > 0.5, x, -x),
    "clip": lambda x: jnp.clip(x, 0.25, 0.75),
}
ONNX_ONLY = {  # TFLite has no builtin for these: the TF lowering refuses them by name
    "conv_grouped": (lambda x: ops.conv2d(x, GROUPED, groups=2), "conv_general_dilated"),
    "batched_contraction": (lambda x: jnp.einsum("bhwc,bhwd->bcd", x, x), "dot_general"),
}


def _onnx_run(function, x):
    model = onnx_lowering.lower(graph.trace_function(function, x.shape[1:]))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})[0]


def _tf_run(function, x):
    return tf_lowering.lower(graph.trace_function(function, x.shape[1:]))(x).numpy()


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_primitive_matches_jax_in_onnx_and_tf(name):
    x = RNG.random((3, *SHAPE), np.float32)
    want = np.asarray(CASES[name](jnp.asarray(x)))
    for got in (_onnx_run(CASES[name], x), _tf_run(CASES[name], x)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("name", sorted(ONNX_ONLY))
def test_what_tflite_cannot_express_is_refused_by_name_and_onnx_runs(name):
    function, primitive = ONNX_ONLY[name]
    x = RNG.random((2, *SHAPE), np.float32)
    np.testing.assert_allclose(_onnx_run(function, x), np.asarray(function(jnp.asarray(x))), rtol=1e-5, atol=1e-4)
    with pytest.raises(graph.UnsupportedOpError, match=rf"tflite cannot express the JAX primitive '{primitive}'"
                                                       r".*; export to onnx"):
        _tf_run(function, x)


def test_a_primitive_no_lowering_knows_names_the_op_the_format_and_another_format():
    x = RNG.random((2, *SHAPE), np.float32)
    for run, fmt in ((_onnx_run, "onnx"), (_tf_run, "tflite")):
        with pytest.raises(graph.UnsupportedOpError, match=rf"{fmt} cannot express the JAX primitive 'cumsum'; "
                                                           "export to .*stablehlo"):
            run(lambda v: jnp.cumsum(v, axis=1), x)


def test_a_batch_folded_into_another_axis_is_refused():
    with pytest.raises(graph.UnsupportedOpError, match="folds the batch"):
        _onnx_run(lambda v: v.reshape(-1, 4), RNG.random((2, *SHAPE), np.float32))


@pytest.mark.skipif(not onednn.available(), reason="the oneDNN kernel is not built here (no g++ or wheels)")
def test_portable_mode_keeps_the_onednn_custom_call_out_of_a_trace():
    x = jnp.ones((2, *SHAPE))

    def lowered():
        return jax.jit(lambda v: ops.conv2d(v, K)).lower(x).as_text()

    assert "cnn_jax_conv" in lowered()  # without the switch CPU traces hold oneDNN's FFI target
    with ops.kernels("portable"):
        text = lowered()
    assert "custom_call" not in text and "platform_index" not in text and "convolution" in text
    assert "cnn_jax_conv" in lowered()  # the switch ends with its block
