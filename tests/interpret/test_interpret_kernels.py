"""Interpretation sees the model as written, whatever kernel mode is in force (``ops.kernels``).

In mode "fast", ``fused_apply`` (the engine's evaluation, a training state's ``apply_fn``) computes each
ConvBN's convolution, BatchNorm and ReLU as one oneDNN kernel, in which no ``jax.nn.relu`` call is left for guided
backpropagation or feature visualization to rewrite. The methods trace models in ``core.SEPARATE``, where every
module computes its own output; these tests fail if one traced in the caller's mode instead.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import Zoo

from cnn_jax import interpret, ops
from cnn_jax.fused import fused_apply
from cnn_jax.interpret import core, rewrite
from cnn_jax.ops import fast, switch


@pytest.fixture(scope="module")
def small_cnn():
    return Zoo("simple_cnn", (12, 12, 1))


@pytest.fixture(scope="module")
def fused_resnet():
    with ops.kernels("fast"):
        if not fast.fuses_epilogue(jnp.float32):
            pytest.skip("the fused ConvBN kernel does not run here (oneDNN unavailable), so mode 'fast' hides "
                        "nothing from a trace")
    return Zoo("resnet20", (16, 16, 3))


def test_fast_mode_would_hide_the_relus_of_a_fused_model(fused_resnet):
    """The premise: traced in "fast", the fused model calls fewer ReLUs than the model as written."""
    fused = functools.partial(fused_apply(fused_resnet.model), fused_resnet.variables)

    def relus(f, mode):
        with ops.kernels(mode):
            return list(rewrite.custom_jvp_calls(jax.make_jaxpr(f)(fused_resnet.images).jaxpr)).count("relu")

    assert relus(fused, "fast") < relus(fused, "separate") == relus(fused_resnet.f, "fast")


def test_guided_backprop_of_a_fused_model_in_fast_mode_is_the_written_models(fused_resnet):
    fused = functools.partial(fused_apply(fused_resnet.model), fused_resnet.variables)
    with ops.kernels("fast"):
        ours = interpret.guided_backprop(fused, fused_resnet.images, fused_resnet.targets)
    written = interpret.guided_backprop(fused_resnet.f, fused_resnet.images, fused_resnet.targets)
    plain = interpret.saliency(fused_resnet.f, fused_resnet.images, fused_resnet.targets)
    assert float(np.abs(np.asarray(written) - np.asarray(plain)).max()) > 1e-3  # guided differs from plain here
    np.testing.assert_allclose(ours, written, rtol=1e-4, atol=1e-5 * float(np.abs(written).max()))


def test_every_trace_is_in_separate_mode(monkeypatch, small_cnn):
    """Every method that looks inside the model (guided backprop, Grad-CAM, taps, feature visualization) traces it
    through ``core.trace`` or reads a layer under ``core.SEPARATE``: record the mode each model call runs in."""
    modes = []
    apply = small_cnn.model.apply

    def recording_apply(*args, **kwargs):
        modes.append(switch.mode())
        return apply(*args, **kwargs)

    model = small_cnn.model
    monkeypatch.setattr(type(model), "apply", lambda self, *a, **k: recording_apply(*a, **k))
    x, t = small_cnn.images, small_cnn.targets
    with ops.kernels("fast"):
        interpret.guided_backprop(lambda images: model.apply(small_cnn.variables, images), x, t)
        interpret.grad_cam(model, small_cnn.variables, x, t, "stage2")
        interpret.tap(model, small_cnn.variables, "stage1")(x)
        interpret.activation_maximization(model, small_cnn.variables, interpret.channel("stage2", [0]),
                                          (12, 12, 1), jax.random.key(0), steps=1)
    assert modes and set(modes) == {core.SEPARATE}, modes
