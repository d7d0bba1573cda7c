"""The fused inference convolution (``ops.conv2d_epilogue``: conv, per-channel scale and shift, residual add and
activation in one oneDNN kernel) against the same function written as XLA ops; and ``ConvBN``'s evaluation on it
through ``cnn_jax.fused.fused_apply``.

float32 tolerance: the convolution's sums in another order (1e-4 relative, as tests/ops/test_onednn.py) followed by at
most four float32 operations per element, which add a few units of 2^-24: still 1e-4 relative to the largest
magnitude of each result.

bfloat16 tolerance: the kernel rounds once, after the epilogue (float32 accumulators, post-ops in float32). With
u = 2^-8 and M = the reference computed on absolute values (``|conv|(|x|, |w|) * |scale| + |shift| + |residual|``),
the float32 work is within (K + 4) * 2^-24 * M of exact and the final rounding within u * |result|, so

    |fused - reference| <= u * |reference| + 3 * (K + 4) * 2^-24 * M,

K = kh * kw * C / G. A kernel that rounded the convolution to bf16 before its epilogue (as the separate ops do)
exceeds it where the shift cancels the convolution.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import conv_geometries, examples
from hypothesis import given
from hypothesis import strategies as st
from jax import lax

from cnn_jax import interpret, ops
from cnn_jax.fused import fused_apply
from cnn_jax.models import get_model
from cnn_jax.ops import onednn

pytestmark = [pytest.mark.usefixtures("float32_precision"),
              pytest.mark.skipif(not onednn.available(), reason="oneDNN kernel not built here (see the log)")]
needs_bfloat16 = pytest.mark.skipif(not onednn.bfloat16_native(), reason="no native oneDNN bf16 kernels on this CPU")

RELATIVE = 1e-4
ACTIVATIONS = {None: lambda y: y, "relu": lambda y: jnp.maximum(y, 0.0), "relu6": lambda y: jnp.clip(y, 0.0, 6.0)}


def reference(x, w, scale, shift, residual, activation, strides, pads, dilations, groups):
    """The epilogue as XLA ops in float32."""
    y = lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilations,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
    y = y * scale + shift
    return ACTIVATIONS[activation](y if residual is None else y + residual)


def fused(x, w, scale, shift, residual, activation, strides, pads, dilations, groups):
    return ops.conv2d_epilogue(x, w, scale, shift, residual, activation, stride=strides, padding=pads,
                               dilation=dilations, groups=groups)


def operands(x_shape, kernel_shape, strides, pads, dilations, groups, with_residual, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(kernel_shape), jnp.float32)
    features = kernel_shape[-1]
    scale = jnp.asarray(rng.uniform(-2, 2, features), jnp.float32)
    shift = jnp.asarray(rng.standard_normal(features) * 3, jnp.float32)
    out_shape = jax.eval_shape(lambda x, w: reference(x, w, scale, shift, None, None, strides, pads, dilations,
                                                      groups), x, w).shape
    residual = jnp.asarray(rng.standard_normal(out_shape), jnp.float32) if with_residual else None
    return x, w, scale, shift, residual


def close(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(np.abs(expected).max(), 1e-6)
    assert np.abs(actual - expected).max() <= RELATIVE * scale, np.abs(actual - expected).max() / scale


@pytest.mark.parametrize("dtype", [pytest.param("float32"), pytest.param("bfloat16", marks=needs_bfloat16)])
@examples(20)
@given(conv_geometries(), st.sampled_from(list(ACTIVATIONS)), st.booleans())
def test_the_fused_kernel_matches_the_separate_ops(dtype, geometry, activation, with_residual):
    x_shape, kernel_shape, strides, pads, dilations, groups = geometry
    x, w, scale, shift, residual = operands(x_shape, kernel_shape, strides, pads, dilations, groups, with_residual)
    geometry = (strides, pads, dilations, groups)
    if dtype == "float32":
        close(jax.jit(fused, static_argnums=range(5, 10))(x, w, scale, shift, residual, activation, *geometry),
              reference(x, w, scale, shift, residual, activation, *geometry))
    else:
        x16, w16 = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
        r16 = None if residual is None else residual.astype(jnp.bfloat16)

        def up(a):
            return None if a is None else a.astype(jnp.float32)

        got = jax.jit(fused, static_argnums=range(5, 10))(x16, w16, scale, shift, r16, activation, *geometry)
        assert got.dtype == jnp.bfloat16
        expected = reference(up(x16), up(w16), scale, shift, up(r16), activation, *geometry)
        magnitude = reference(jnp.abs(up(x16)), jnp.abs(up(w16)), jnp.abs(scale), jnp.abs(shift),
                              None if r16 is None else jnp.abs(up(r16)), None, *geometry)
        terms = kernel_shape[0] * kernel_shape[1] * kernel_shape[2]
        bound = 2.0 ** -8 * np.abs(np.asarray(expected)) + 3 * (terms + 4) * 2.0 ** -24 * np.asarray(magnitude)
        excess = np.abs(np.asarray(got, np.float64) - np.asarray(expected, np.float64)) - bound
        assert excess.max() <= 0, excess.max()


GEOMETRY = ((1, 1), ((1, 1), (1, 1)), (1, 1), 1)


def test_one_kernel_does_it_all_and_its_derivatives_are_the_separate_ops():
    """The lowering holds one fused call and no elementwise epilogue; grad, jvp and vmap agree with XLA's ops."""
    x, w, scale, shift, residual = operands((2, 9, 8, 4), (3, 3, 4, 6), *GEOMETRY, with_residual=True)
    def mine(x, w, scale, shift, residual):
        return fused(x, w, scale, shift, residual, "relu", *GEOMETRY)
    def ref(x, w, scale, shift, residual):
        return reference(x, w, scale, shift, residual, "relu", *GEOMETRY)
    text = jax.jit(mine).lower(x, w, scale, shift, residual).as_text()
    assert re.findall(r"custom_call @(\w+)", text) == ["cnn_jax_conv_fused"]
    assert "maximum" not in text and "multiply" not in text
    args = (x, w, scale, shift, residual)
    def loss(f):
        return jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), argnums=range(5)))
    for got, want in zip(loss(mine)(*args), loss(ref)(*args)):
        close(got, want)
    tangents = tuple(jnp.cos(a) for a in args)
    close(jax.jvp(mine, args, tangents)[1], jax.jvp(ref, args, tangents)[1])
    xs, rs, ws = jnp.stack([x, -x]), jnp.stack([residual, 2 * residual]), jnp.stack([w, w ** 2])
    close(jax.vmap(mine, (0, None, None, None, 0))(xs, w, scale, shift, rs),
          jax.vmap(ref, (0, None, None, None, 0))(xs, w, scale, shift, rs))
    close(jax.vmap(mine, (None, 0, None, None, None))(x, ws, scale, shift, residual),
          jax.vmap(ref, (None, 0, None, None, None))(x, ws, scale, shift, residual))


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [pytest.param("float32"), pytest.param("bfloat16", marks=needs_bfloat16)])
@pytest.mark.parametrize("x_shape, kernel_shape, strides, groups", [
    ((128, 32, 32, 16), (3, 3, 16, 16), (1, 1), 1),  # resnet20's first stage
    ((16, 56, 56, 144), (3, 3, 1, 144), (2, 2), 144),  # mobilenet_v2's depthwise
    ((16, 56, 56, 24), (1, 1, 24, 144), (1, 1), 1),  # its 1x1 expansion
], ids=["3x3", "depthwise", "1x1"])
def test_inference_shapes_run_on_optimized_kernels(x_shape, kernel_shape, strides, groups, dtype, activation):
    """With every epilogue (scale, shift, residual, activation as post-ops) oneDNN still picks a JIT kernel, not
    its reference loops; bf16 a kernel on bf16 instructions."""
    pads = ((kernel_shape[0] // 2,) * 2,) * 2
    name = onednn.implementation(3, x_shape, kernel_shape, strides, pads, (1, 1), groups, dtype, True, activation)
    assert not name.startswith("ref") and "unavailable" not in name and "error" not in name, name
    if dtype == "bfloat16":
        assert onednn.bfloat16_isa(name), name


def random_batch_stats(variables, seed=0):
    """Running statistics away from their initial 0 and 1, so evaluation's BatchNorm does something."""
    rng = np.random.default_rng(seed)
    def leaves(tree):
        return jax.tree.map(
            lambda v: jnp.asarray(rng.uniform(0.5, 1.5, v.shape) * v + rng.normal(0, 0.1, v.shape), v.dtype), tree)
    return {**variables, "batch_stats": leaves(variables["batch_stats"]),
            "params": leaves(variables["params"])}


@pytest.mark.parametrize("name, image_shape, kwargs, calls", [
    ("resnet20", (32, 32, 3), {}, 19),  # every ConvBN: stem and 18 in blocks (parameter-free shortcuts)
    ("resnet18", (32, 32, 3), {}, 20),  # with projection shortcuts
    ("mobilenet_v2", (32, 32, 3), {"width_multiplier": 0.25}, 52),  # ReLU6, linear projections with their residual
])
def test_zoo_evaluation_runs_each_conv_batchnorm_as_one_kernel_and_matches_the_separate_modules(
        name, image_shape, kwargs, calls):
    """``fused_apply`` runs each evaluation ConvBN as one kernel in mode "fast"; ``model.apply`` (the model as
    written), mode "separate" and mode "portable" keep the modules apart and agree with it. Small images and a
    narrow mobilenet_v2 keep it fast: the layers, and so the kernel count, are the full models'."""
    model = get_model(name, 10, **kwargs)
    images = jnp.asarray(np.random.default_rng(1).uniform(size=(2, *image_shape)), jnp.float32)
    variables = random_batch_stats(model.init(jax.random.key(0), images, train=False))
    def evaluate(v, x):
        return fused_apply(model)(v, x, train=False)
    text = jax.jit(evaluate).lower(variables, images).as_text()
    assert text.count("@cnn_jax_conv_fused") == calls and "@cnn_jax_conv(" not in text
    def as_written(v, x):
        return model.apply(v, x, train=False)
    assert "@cnn_jax_conv_fused" not in jax.jit(as_written).lower(variables, images).as_text()
    separate = jax.jit(as_written)(variables, images)
    with ops.kernels("separate"):
        assert "@cnn_jax_conv_fused" not in jax.jit(evaluate).lower(variables, images).as_text()
    close(jax.jit(evaluate)(variables, images), separate)
    with ops.kernels("portable"):
        assert "cnn_jax_conv" not in jax.jit(evaluate).lower(variables, images).as_text()
        close(jax.jit(evaluate)(variables, images), separate)


def test_training_steps_keep_the_separate_path():
    model = get_model("resnet20", 10)
    images = jnp.zeros((2, 32, 32, 3))
    variables = model.init(jax.random.key(0), images, train=False)
    def loss(params):
        return fused_apply(model)({**variables, "params": params}, images, train=True,
                                  mutable=["batch_stats"])[0].sum()
    assert "cnn_jax_conv_fused" not in jax.jit(jax.grad(loss)).lower(variables["params"]).as_text()


def test_guided_backprop_and_layer_taps_see_through_a_model_jitted_and_run_before():
    """A jitted logits function already traced with fused kernels: interpretation traces it again in mode
    "separate" (the mode is part of jit's cache key), so guided backprop finds its ReLUs and Grad-CAM its
    convolutions."""
    model = get_model("resnet20", 3)
    images = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 32, 32, 3)), jnp.float32)
    variables = random_batch_stats(model.init(jax.random.key(0), images, train=False))
    f = jax.jit(lambda x: fused_apply(model)(variables, x))
    logits = f(images)
    assert "@cnn_jax_conv_fused" in f.lower(images).as_text()
    targets = jnp.argmax(logits, axis=1)
    guided = interpret.guided_backprop(f, images, targets)
    plain = interpret.saliency(f, images, targets)
    assert np.abs(np.asarray(guided - plain)).max() > 0.1 * np.abs(np.asarray(plain)).max()  # the rule applied
    assert "stage2_block0/conv1/conv" in interpret.conv_layers(model, variables, images)
    cam = interpret.grad_cam(model, variables, images, targets, "stage2_block0/conv1/conv")
    assert cam.shape == images.shape[:3] and float(cam.max()) > 0
