"""Helpers shared by the test modules (no test module imports another): paths and subprocess runs of the
experiments, small TFDS datasets written on the fly, random variables for zoo models, the hypothesis strategies of
the convolution tests, and the exports and PAIR saliency adapters that several modules compare against."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import assume, settings
from hypothesis import strategies as st

from cnn_jax import data, export
from cnn_jax.export import runtime as runtime_lib
from cnn_jax.models import get_model

# --- hypothesis strategies ------------------------------------------------------------------------------------


@st.composite
def conv_geometries(draw):
    """An NHWC input shape, an HWIO kernel shape, strides, pads, dilations and groups of a valid 2-D convolution:
    kernels up to 5x5, strides up to 3, dilations up to 2, uneven pads up to 2, dense, grouped or (half the time)
    depthwise, on inputs the dilated kernel fits once padded."""
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


def examples(n: int) -> settings:
    """``@settings`` for a property that draws ``n`` examples in the default profile ("ci"): that many times the
    loaded profile's multiple of it (``HYPOTHESIS_PROFILE=thorough`` draws 10x as many), so that no property fixes
    its own count."""
    scale = settings.default.max_examples / settings.get_profile("ci").max_examples
    return settings(max_examples=max(1, round(n * scale)))


# --- random variables with non-trivial BatchNorm statistics -----------------------------------------------------

def varied_variables(module, x, seed=0, **init_kwargs):
    """Variables of ``module.init(key, x, **init_kwargs)``'s shapes, drawn by NumPy (Flax's initializers compile
    slowly on CPU): He-normal kernels, BatchNorm scales and running variances in [0.5, 1.5], biases and running
    means ~ N(0, 0.1^2), so that evaluation's BatchNorm does something and a swapped statistic shows."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            values = rng.normal(0, math.sqrt(2 / math.prod(leaf.shape[:-1])), leaf.shape)
        elif name in ("scale", "var"):
            values = rng.uniform(0.5, 1.5, leaf.shape)
        else:
            values = rng.normal(0, 0.1, leaf.shape)
        return jnp.asarray(values, leaf.dtype)

    abstract = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, **init_kwargs), x)
    return jax.tree_util.tree_map_with_path(draw, abstract)


# --- from run/test_experiments.py -----------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SHARED_DATA = os.environ.get("TFDS_DATA_DIR") or os.path.join(
    os.path.dirname(ROOT), "shared", "tensorflow_datasets")


def write_generated_tfds(data_dir: str, name: str, num_train: int = 300,
                         num_test: int = 100) -> str:
    """Writes `name` (as tfds defines its features) with random images into `data_dir`."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    features = builder.info.features
    rng = np.random.default_rng(0)

    def example(i):
        values = {}
        for key, feature in features.items():
            if isinstance(feature, tfds.features.Image):
                values[key] = rng.integers(0, 256, feature.shape, dtype=np.uint8)
            elif isinstance(feature, tfds.features.ClassLabel):
                values[key] = int(rng.integers(0, feature.num_classes))
            else:
                values[key] = str(i)
        return features.serialize_example(values)

    os.makedirs(builder.data_dir, exist_ok=True)
    splits = []
    for split, count in (("train", num_train), ("test", num_test)):
        template = tfds.core.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name=name,
                                                 split=split, filetype_suffix="tfrecord")
        with tf.io.TFRecordWriter(os.fspath(template.sharded_filepath(shard_index=0,
                                                                      num_shards=1))) as f:
            for i in range(count):
                f.write(example(i))
        splits.append(tfds.core.SplitInfo(name=split, shard_lengths=[count], num_bytes=0,
                                          filename_template=template))
    builder.info.set_splits(tfds.core.SplitDict(splits))
    builder.info.write_to_directory(builder.data_dir)
    return data_dir


def data_dir_for(name: str, tmp_path) -> str:
    if os.path.isdir(os.path.join(SHARED_DATA, name)):
        return SHARED_DATA
    return write_generated_tfds(str(tmp_path / "tfds"), name)


def experiment(script: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"experiments.{script}", *args]


def run(command: list[str], timeout: int = 240, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_vars,
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


# --- from models/test_models.py -------------------------------------------------------------------------------

# Params with 10 classes at the designed input. Published: resnet20/56 (He et al. 2016, table 6, 0.27M/0.85M,
# exact with option-A shortcuts), resnet32/44 (0.46M/0.66M there), lenet5 (6-16-120-84, fully connected C3),
# mlp and simple_cnn (the Keras mnist_mlp and mnist_convnet examples print 669,706 and 34,826). cnn3, vgg_mini
# alexnet_mini and airbench pin the designs their docstrings state.
PARAMS = {
    "airbench": 1_972_792, "airbench_half": 498_104,
    "mlp": 669_706, "simple_cnn": 34_826, "lenet5": 61_706, "cnn3": 551_018, "vgg_mini": 4_102_090,
    "alexnet_mini": 7_706_442, "resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018,
}


def abstract_init(model, x):
    """(logits, variables) of ``model.init`` as shapes and dtypes only."""
    return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x), x)


def random_variables(model, x, seed=0):
    """Variables of ``model.init``'s shapes: He-normal kernels, zero biases and means, unit scales and variances.

    Drawn with numpy because compiling Flax's initializers for every parameter shape costs ~10 s a model on CPU,
    several times the forward pass itself; ``model.init`` runs in the ImageNet tests and the training tests.
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if path[-1].key == "kernel":
            return jnp.asarray(rng.normal(0, math.sqrt(2 / math.prod(leaf.shape[:-1])), leaf.shape), leaf.dtype)
        return jnp.full(leaf.shape, 1.0 if path[-1].key in ("scale", "var") else 0.0, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract_init(model, x)[1])


# --- from models/test_models_imagenet.py ----------------------------------------------------------------------

# name, builder kwargs, trainable params, params + BatchNorm statistics (Keras counts its moving mean/variance too).
PUBLISHED_COUNTS = [
    ("resnet18", {}, 11_689_512, None),
    ("resnet34", {}, 21_797_672, None),
    ("resnet50", {}, 25_557_032, None),
    ("resnet50", {"variant": "keras"}, 25_583_592, 25_636_712),
    ("mobilenet_v2", {}, 3_504_872, 3_538_984),
    ("mobilenet_v2", {"width_multiplier": 1.4}, 6_108_776, 6_156_712),
    ("efficientnet_lite0", {}, 4_652_008, None),
    ("efficientnet_lite1", {}, 5_416_680, None),
    ("efficientnet_lite2", {}, 6_092_072, None),
]


# --- from export/test_export_portable.py ----------------------------------------------------------------------





FLOAT_RUNTIMES = ("stablehlo", "tf", "tflite", "onnx")


def load(dataset, *, image_size=None, num_train_examples=512, batch_size=64):
    if not os.path.isdir(os.path.join(SHARED_DATA, dataset)):
        pytest.skip(f"{dataset} not found in {SHARED_DATA}; set TFDS_DATA_DIR to a TFDS data dir holding it")
    return data.load(data.DataConfig(dataset, data_dir=SHARED_DATA, image_size=image_size, batch_size=batch_size,
                                     num_train_examples=num_train_examples))


def train_and_export(workdir, model_name, ds, steps, learning_rate=1e-3, initial=None, **model_kwargs) -> str:
    """A few Adam steps of ``model_name`` on ``ds``'s training batches, then the workdir export: a short run.
    ``initial`` (pretrained variables) replaces every initialized array of the same name and shape."""
    model = get_model(model_name, ds.info.num_classes, **model_kwargs)
    variables = model.init(jax.random.key(0), np.zeros((1, *ds.info.image_shape), np.float32))
    if initial is not None:
        given = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(initial)[0]}
        variables = jax.tree_util.tree_map_with_path(
            lambda p, v: given[jax.tree_util.keystr(p)]
            if np.shape(given.get(jax.tree_util.keystr(p))) == np.shape(v) else v, variables)
    optimizer = optax.adam(learning_rate)
    state = (variables, optimizer.init(variables["params"]))

    @jax.jit
    def step(state, images, labels, key):
        variables, opt_state = state

        def loss(params):
            logits, updates = model.apply({**variables, "params": params}, images, train=True,
                                          mutable=["batch_stats"], rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

        grads, updates = jax.grad(loss, has_aux=True)(variables["params"])
        changes, opt_state = optimizer.update(grads, opt_state, variables["params"])
        return {**variables, **updates, "params": optax.apply_updates(variables["params"], changes)}, opt_state

    done, epoch = 0, 0
    while done < steps:
        for batch in ds.train_batches(epoch):
            state = step(state, batch["image"], batch["label"], jax.random.key(done))
            done += 1
            if done == steps:
                break
        epoch += 1
    export.save_export(str(workdir), model_name, model_kwargs, state[0], ds.info.class_names, ds.info.image_shape)
    return str(workdir)


def first_test_images(ds, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` test images (float32 in [0, 1]) and labels."""
    images, labels = [], []
    for batch in ds.eval_batches("test"):
        keep = batch["mask"] > 0
        images.append(batch["image"][keep])
        labels.append(batch["label"][keep])
        if sum(len(i) for i in images) >= count:
            break
    return np.concatenate(images)[:count], np.concatenate(labels)[:count]


def jax_logits(workdir, images):
    model, variables, _ = export.load_export(workdir)
    return np.asarray(jax.jit(model.apply)(variables, images))


def assert_float_parity(workdir, images, runtimes=FLOAT_RUNTIMES):
    """Every float runtime's logits within 1e-4 of max |logit| of the JAX model's, on ``images``."""
    want = jax_logits(workdir, images)
    for name in runtimes:
        got = runtime_lib.load_runtime(workdir, name).logits(images)
        assert got.shape == want.shape, name
        error = np.abs(got - want).max() / np.abs(want).max()
        assert error <= 1e-4, f"{name}: max |logit difference| is {error:.2e} of max |logit|"
    return want


# --- from interpret/test_interpret.py -------------------------------------------------------------------------

def fast_key(seed=0):
    """An "rbg" key: its random bits compile several times faster on CPU than the default threefry ones."""
    return jax.random.key(seed, impl="rbg")


def uniform_images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


def relative_error(actual, expected) -> float:
    """max |actual - expected| over max |expected|."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


class Zoo:
    """A zoo model with numpy-drawn variables, and its logits function ``f``."""

    def __init__(self, name, image_shape, num_classes=3, batch=2):
        self.model = get_model(name, num_classes)
        self.images = uniform_images((batch, *image_shape))
        self.variables = random_variables(self.model, self.images)
        self.targets = jnp.arange(batch) % num_classes
        self.f = jax.jit(lambda x: self.model.apply(self.variables, x))


def pair_model_function(pair, zoo, layer_values=None):
    """A ``saliency.core`` call_model_function over a zoo model, with ``call_model_args={"target": class}``.

    Its gradients come from plain ``jax.grad`` of the model, so the parity tests compare the methods' own
    arithmetic; ``layer_values`` (x -> (layer activations, d target logit / d activations)) serves Grad-CAM.
    """
    def score(x, target):
        return zoo.f(x)[:, target].sum()

    gradient = jax.jit(jax.grad(score), static_argnums=1)
    values = jax.jit(lambda x, target: zoo.f(x)[:, target], static_argnums=1)

    def call(x_batch, call_model_args=None, expected_keys=None):
        x, target = jnp.asarray(x_batch, jnp.float32), call_model_args["target"]
        out = {}
        if pair.INPUT_OUTPUT_GRADIENTS in expected_keys:
            out[pair.INPUT_OUTPUT_GRADIENTS] = np.asarray(gradient(x, target))
        if pair.OUTPUT_LAYER_VALUES in expected_keys:
            out[pair.OUTPUT_LAYER_VALUES] = np.asarray(values(x, target))
        if pair.CONVOLUTION_LAYER_VALUES in expected_keys:
            activation, layer_gradient = layer_values(x, target)
            out[pair.CONVOLUTION_LAYER_VALUES] = np.asarray(activation)
            out[pair.CONVOLUTION_OUTPUT_GRADIENTS] = np.asarray(layer_gradient)
        return out

    return call


def pair_masks(zoo, method, call, **kwargs):
    """PAIR's ``method`` on each image alone (it takes one image), stacked."""
    return np.stack([method(np.asarray(x, np.float64), call, {"target": int(t)}, **kwargs)
                     for x, t in zip(zoo.images, zoo.targets)])


# --- from data/test_streaming.py ------------------------------------------------------------------------------

SHARDS = (40, 25, 30)  # several TFRecord files of uneven length: tfds interleaves them in blocks of 16


def write_tfds(data_dir: str, name: str = "mnist", shard_lengths=SHARDS, num_test: int = 23) -> str:
    """Writes tfds dataset ``name`` (its own features) with random images, the train split in several files."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    features = builder.info.features
    rng = np.random.default_rng(0)
    os.makedirs(builder.data_dir, exist_ok=True)
    splits = []
    for split, lengths in (("train", shard_lengths), ("test", (num_test,))):
        template = tfds.core.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name=name, split=split,
                                                 filetype_suffix="tfrecord")
        for shard, count in enumerate(lengths):
            path = os.fspath(template.sharded_filepath(shard_index=shard, num_shards=len(lengths)))
            with tf.io.TFRecordWriter(path) as writer:
                for _ in range(count):
                    writer.write(features.serialize_example({
                        "image": rng.integers(0, 256, features["image"].shape, dtype=np.uint8),
                        "label": int(rng.integers(0, 10))}))
        splits.append(tfds.core.SplitInfo(name=split, shard_lengths=list(lengths), num_bytes=0,
                                          filename_template=template))
    builder.info.set_splits(tfds.core.SplitDict(splits))
    builder.info.write_to_directory(builder.data_dir)
    return data_dir

