"""The oneDNN convolution primitive against XLA's convolution: values, every derivative, vmap, lowering.

Tolerances: float32 sums of up to kh*kw*C products taken in a different order, so 1e-4 relative to the
largest magnitude of each result (the values are O(1) to O(100)).
"""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jax import lax

from cnn_jax import ops
from cnn_jax.ops import onednn

pytestmark = [pytest.mark.usefixtures("float32_precision"),
              pytest.mark.skipif(not onednn.available(), reason="oneDNN kernel not built here (see the log)")]

RELATIVE = 1e-4


def close(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = max(np.abs(expected).max(), 1e-6)
    assert np.abs(actual - expected).max() <= RELATIVE * scale, np.abs(actual - expected).max() / scale


@st.composite
def geometries(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilations = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    n, groups = draw(st.integers(1, 3)), draw(st.sampled_from([1, 1, 2, 3]))
    in_per_group, out_per_group = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    if draw(st.booleans()):  # depthwise: one filter per channel
        groups, in_per_group, out_per_group = draw(st.integers(2, 16)), 1, 1
    for size, k, d, (lo, hi) in ((h, kh, dilations[0], pads[0]), (w, kw, dilations[1], pads[1])):
        assume(size + lo + hi >= (k - 1) * d + 1)
    return ((n, h, w, groups * in_per_group), (kh, kw, in_per_group, groups * out_per_group), strides, pads, dilations,
            groups)


def arrays(x_shape, kernel_shape, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal(x_shape), jnp.float32),
            jnp.asarray(rng.standard_normal(kernel_shape), jnp.float32))


def both(strides, pads, dilations, groups=1):
    xla = lambda x, w: lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilations,
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
    return (lambda x, w: onednn.conv2d(x, w, strides, pads, dilations, groups)), xla


@settings(max_examples=40, deadline=None)
@given(geometries())
def test_forward_and_both_gradients_match_xla(geometry):
    x_shape, kernel_shape, strides, pads, dilations, groups = geometry
    x, w = arrays(x_shape, kernel_shape)
    mine, xla = both(strides, pads, dilations, groups)
    close(jax.jit(mine)(x, w), xla(x, w))
    loss = lambda conv: jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), (0, 1)))
    for got, want in zip(loss(mine)(x, w), loss(xla)(x, w)):
        close(got, want)


@pytest.mark.parametrize("geometry", [
    ((2, 9, 8, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    ((2, 17, 15, 3), (3, 3, 3, 4), (2, 1), ((1, 1), (1, 1)), (2, 1), 1),
    ((2, 11, 10, 6), (3, 3, 1, 6), (2, 2), ((1, 1), (1, 1)), (1, 1), 6),
], ids=["same", "strided-dilated", "depthwise"])
def test_second_order_forward_mode_and_vmap_match_xla(geometry):
    x_shape, kernel_shape, strides, pads, dilations, groups = geometry
    x, w = arrays(x_shape, kernel_shape)
    mine, xla = both(strides, pads, dilations, groups)
    loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w)))
    curvature = lambda conv: jax.jit(jax.grad(lambda x, w: jnp.sum(jax.grad(loss(conv), 0)(x, w) ** 2), (0, 1)))
    for got, want in zip(curvature(mine)(x, w), curvature(xla)(x, w)):
        close(got, want)
    tangents = (jnp.cos(x), -w)
    close(jax.jvp(mine, (x, w), tangents)[1], jax.jvp(xla, (x, w), tangents)[1])
    xs, ws = jnp.stack([x, 2 * x]), jnp.stack([w, w ** 2, -w])
    close(jax.vmap(mine, (0, None))(xs, w), jax.vmap(xla, (0, None))(xs, w))
    close(jax.vmap(mine, (None, 0))(x, ws), jax.vmap(xla, (None, 0))(x, ws))
    close(jax.vmap(mine)(xs, ws[:2]), jax.vmap(xla)(xs, ws[:2]))


def test_training_step_lowers_every_convolution_to_onednn():
    x, w = jnp.zeros((2, 8, 8, 4)), jnp.zeros((3, 3, 4, 5))
    step = jax.jit(jax.grad(lambda x, w: jnp.sum(ops.conv2d(x, w, stride=2, padding="CIRCULAR") ** 2), (0, 1)))
    text = step.lower(x, w).as_text()
    assert "convolution" not in text
    assert text.count("cnn_jax_conv") == 3  # forward, data gradient, weight gradient


@pytest.mark.parametrize("x_shape, kernel_shape, strides, groups", [
    ((128, 32, 32, 16), (3, 3, 16, 16), (1, 1), 1),  # a CIFAR ResNet convolution
    ((32, 64, 64, 96), (3, 3, 1, 96), (2, 2), 96),  # EfficientNet-Lite depthwise convolutions at 128 px
    ((32, 8, 8, 480), (5, 5, 1, 480), (1, 1), 480),
], ids=["cifar-3x3", "depthwise-3x3-s2", "depthwise-5x5"])
def test_training_shapes_run_on_optimized_kernels(x_shape, kernel_shape, strides, groups):
    """Every mode gets a JIT-generated kernel, not oneDNN's reference loops."""
    pads = ((kernel_shape[0] // 2,) * 2,) * 2
    for mode in range(3):
        name = onednn.implementation(mode, x_shape, kernel_shape, strides, pads, (1, 1), groups)
        assert not name.startswith("ref") and "unavailable" not in name, name


def test_grouped_float32_convolutions_run_on_onednn_and_bfloat16_stays_on_xla():
    x = jnp.zeros((1, 8, 8, 4), jnp.bfloat16)
    assert "cnn_jax_conv" not in jax.jit(ops.conv2d).lower(x, jnp.zeros((3, 3, 4, 4), jnp.bfloat16)).as_text()
    grouped = jax.jit(lambda x, w: ops.conv2d(x, w, groups=2)).lower(x.astype(jnp.float32), jnp.zeros((3, 3, 2, 4)))
    assert "cnn_jax_conv" in grouped.as_text()


def lowered_in_fresh_process(batch: int, **environment) -> str:
    """The StableHLO of a jitted 3x3 convolution, lowered by a new Python with ``environment`` added."""
    code = ("import jax.numpy as jnp, jax; from cnn_jax import ops; "
            f"print(jax.jit(ops.conv2d).lower(jnp.zeros(({batch}, 8, 8, 4)), jnp.zeros((3, 3, 4, 4))).as_text())")
    env = dict(os.environ, **environment)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_environment_variable_keeps_convolutions_on_xla():
    text = lowered_in_fresh_process(1, CNN_JAX_CONV="xla")
    assert "convolution" in text and "cnn_jax_conv" not in text


def test_without_a_compiler_convolutions_fall_back_to_xla_with_a_warning(tmp_path):
    code = ("import jax.numpy as jnp, numpy as np; from cnn_jax import ops; from cnn_jax.ops import onednn; "
            "print(onednn.available()); "
            "print(float(ops.conv2d(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1))).sum()))")
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), XDG_CACHE_HOME=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "100.0"]  # 4 corners x 4 + 8 edges x 6 + 4 inner x 9
    assert "no C++ compiler" in done.stderr and "using XLA's" in done.stderr


def test_several_cpu_devices_keep_convolutions_on_xla():
    """A custom call cannot be partitioned: with data parallelism over CPU devices, convolutions stay XLA's."""
    text = lowered_in_fresh_process(8, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    assert "convolution" in text and "cnn_jax_conv" not in text
