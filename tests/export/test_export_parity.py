"""Export parity in the default run for a model with BatchNorm, residual connections and depthwise convolutions:
MobileNetV2 (narrow, at 32x32), with random weights and random BatchNorm statistics, so no data or training is
needed. Every portable format is written by ``export.export_format`` and run by its runtime, against the model as
the jax runtime runs it (the engine's ``fused_apply``: oneDNN, its fused epilogue), on a batch size that no trace
used.
"""
from __future__ import annotations

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import export
from cnn_jax.export import runtime as runtime_lib
from cnn_jax.models import get_model

MODEL, KWARGS, IMAGE_SHAPE = "mobilenet_v2", {"width_multiplier": 0.35}, (32, 32, 3)
CLASSES = [f"class{i}" for i in range(7)]
FLOAT_RUNTIMES = ("stablehlo", "tf", "tflite", "onnx")


def random_variables(seed: int = 0) -> dict:
    """He-normal kernels (``helpers.random_variables``) with every BatchNorm made non-trivial: scale in [0.5, 1.5],
    bias and running mean N(0, 0.2), running variance in [0.5, 2]. (At 1, 0, 0 and 1 a lowering that dropped
    BatchNorm, or folded it wrongly, would still match.)"""
    model = get_model(MODEL, len(CLASSES), **KWARGS)
    variables = helpers.random_variables(model, jnp.zeros((1, *IMAGE_SHAPE)), seed)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = jax.tree_util.keystr(path), np.shape(leaf)
        if name.endswith("['var']"):
            return rng.uniform(0.5, 2.0, shape).astype(np.float32)
        if name.endswith("['mean']") or ("['bn']" in name and name.endswith("['bias']")):
            return rng.normal(0.0, 0.2, shape).astype(np.float32)
        if "['bn']" in name and name.endswith("['scale']"):
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        return np.asarray(leaf)

    return jax.tree_util.tree_map_with_path(draw, variables)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("parity"))
    export.save_export(workdir, MODEL, KWARGS, random_variables(), CLASSES, IMAGE_SHAPE)
    for fmt in export.FORMATS:
        export.export_format(workdir, fmt)
    return workdir


def test_the_model_has_what_the_test_is_for(exported):
    """BatchNorm statistics, and in the exported graph 17 depthwise convolutions (one per block) and the residual
    additions of the 10 blocks that keep their shape (additions of two computed values, not of a constant)."""
    import onnx

    model = onnx.load(export.artifact_path(exported, "onnx"))
    constants = {tensor.name for tensor in model.graph.initializer}
    groups = [attribute.i for node in model.graph.node if node.op_type == "Conv"
              for attribute in node.attribute if attribute.name == "group"]
    residuals = [node for node in model.graph.node if node.op_type == "Add" and not constants & set(node.input)]
    assert sum(g > 1 for g in groups) == 17 and len(residuals) == 10
    _, variables, _ = export.load_export(exported)
    assert np.ptp(np.concatenate([np.ravel(v) for v in jax.tree.leaves(variables["batch_stats"])])) > 1


def test_every_format_matches_the_jax_model(exported):
    images = np.random.default_rng(1).random((5, *IMAGE_SHAPE), np.float32)
    want = runtime_lib.load_runtime(exported, "jax").logits(images)
    assert np.ptp(want, axis=1).min() > 1e-3  # logits that differ between classes: a real comparison
    for name in FLOAT_RUNTIMES:
        got = runtime_lib.load_runtime(exported, name).logits(images)
        assert got.shape == want.shape, name
        error = np.abs(got - want).max() / np.abs(want).max()
        assert error <= 1e-4, f"{name}: max |logit difference| is {error:.2e} of max |logit|"


def test_tflite_keeps_depthwise_convolutions_as_such(exported):
    from ai_edge_litert.interpreter import Interpreter

    ops = {op["op_name"] for op in Interpreter(model_path=export.artifact_path(exported, "tflite"))
           ._get_ops_details()}
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD"} <= ops, ops
