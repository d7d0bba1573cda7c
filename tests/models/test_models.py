"""The model zoo: the registry over every model, and the small models (MLP, classic CNNs, CIFAR ResNets).

Parameter counts, shapes and dtypes come from ``jax.eval_shape`` (nothing is compiled); real forwards run on
batches of two small images, with variables drawn by numpy (``random_variables``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PARAMS, abstract_init, random_variables

from cnn_jax.models import get_model, list_models, model_spec
from cnn_jax.models.mlp import MLPHead
from cnn_jax.models.resnet_cifar import CifarResNet
from cnn_jax.ops import count_params

# What the issue asks the zoo to hold.
REQUIRED_MODELS = (
    "mlp", "simple_cnn", "cnn3", "lenet5", "alexnet_mini", "vgg_mini", "resnet20", "resnet32", "resnet44",
    "resnet56", "resnet18", "resnet34", "resnet50", "mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1",
    "efficientnet_lite2")

SMALL_MODELS = tuple(PARAMS)

_RESNET_MAPS = {"stage1": (32, 32, 16), "stage2": (16, 16, 32), "stage3": (8, 8, 64), "features": (8, 8, 64)}
# Sown maps at the designed input (per image).
SOWN = {
    "mlp": {"features": (28, 28, 1)},
    "simple_cnn": {"stage1": (13, 13, 32), "stage2": (5, 5, 64), "features": (5, 5, 64)},
    "lenet5": {"stage1": (14, 14, 6), "stage2": (5, 5, 16), "features": (5, 5, 16)},
    "cnn3": {"stage1": (16, 16, 32), "stage2": (8, 8, 64), "stage3": (4, 4, 128), "features": (4, 4, 128)},
    "vgg_mini": {"stage1": (16, 16, 64), "stage2": (8, 8, 128), "stage3": (4, 4, 256), "features": (4, 4, 256)},
    "alexnet_mini": {"stage1": (16, 16, 64), "stage2": (8, 8, 192), "stage3": (4, 4, 256), "features": (4, 4, 256)},
    **{f"resnet{depth}": _RESNET_MAPS for depth in (20, 32, 44, 56)},
    "airbench": {"stage1": (16, 16, 64), "stage2": (8, 8, 256), "stage3": (4, 4, 256), "features": (4, 4, 256)},
    "airbench_half": {"stage1": (16, 16, 32), "stage2": (8, 8, 128), "stage3": (4, 4, 128), "features": (4, 4, 128)},
}
BATCHNORM_MODELS = ("cnn3", "vgg_mini", "resnet20")


def images(name, size=None, batch=2, seed=0):
    h, w, c = model_spec(name).input_shape
    shape = (batch, h, w, c) if size is None else (batch, size, size, c)
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)






def train_apply(model):
    """``(variables, x, seed) -> (logits, {"batch_stats": ...})`` in training mode, jitted: one compile, and "rbg"
    dropout keys, which compile several times faster on CPU than the default threefry ones."""
    def apply(variables, x, seed):
        rngs = {"dropout": jax.random.key(seed, impl="rbg")}
        return model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
    return jax.jit(apply)


def abstract_intermediates(model, x):
    variables = abstract_init(model, x)[1]
    return jax.eval_shape(lambda v, x: model.apply(v, x, mutable=["intermediates"]), variables, x)


# --- the registry, over every model ----------------------------------------------------------------------------

def test_list_models_is_sorted_unique_and_complete():
    names = list_models()
    assert names == sorted(set(names))
    assert set(REQUIRED_MODELS) <= set(names)


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown model 'resnet21'") as error:
        get_model("resnet21", 10)
    for name in list_models():
        assert name in str(error.value)


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, "10", None])
def test_bad_num_classes_is_rejected(num_classes):
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        get_model("mlp", num_classes)


@pytest.mark.parametrize("name", list_models())
def test_forward_at_the_designed_input_gives_one_logit_per_class(name):
    model, x = get_model(name, 10), images(name)
    if max(x.shape[1:3]) > 64:  # ImageNet sizes: shapes only, the real forwards are in test_models_imagenet.py
        logits, _ = abstract_init(model, x)
    else:
        logits = model.apply(random_variables(model, x), x)
        assert np.isfinite(logits).all()
    assert (logits.shape, logits.dtype) == ((2, 10), jnp.float32)


@pytest.mark.parametrize("name", list_models())
def test_min_size_is_accepted_and_smaller_is_rejected(name):
    spec = model_spec(name)
    model = get_model(name, 10)
    logits, _ = abstract_init(model, images(name, spec.min_size))
    assert logits.shape == (2, 10)
    with pytest.raises(ValueError, match=f"at least {spec.min_size}x{spec.min_size}"):
        abstract_init(model, images(name, spec.min_size - 1))


# --- the small models -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SMALL_MODELS)
def test_parameter_count(name):
    _, variables = abstract_init(get_model(name, 10), images(name))
    assert count_params(variables["params"]) == PARAMS[name]


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_stages_and_features_are_sown(name):
    _, state = abstract_intermediates(get_model(name, 10), images(name))
    sown = {key: value[0].shape for key, value in state["intermediates"].items()}
    assert sown == {key: (2, *shape) for key, shape in SOWN[name].items()}


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_wrong_rank_and_integer_images_are_rejected(name):
    model, x = get_model(name, 10), images(name)
    with pytest.raises(ValueError, match="rank 4"):
        abstract_init(model, x[0])
    with pytest.raises(ValueError, match="astype"):
        abstract_init(model, (x * 255).astype(jnp.uint8))


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_bfloat16_computes_in_bfloat16_with_float32_params(name):
    model, x = get_model(name, 10, dtype=jnp.bfloat16), images(name)
    logits, variables = abstract_init(model, x)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables["params"])} == {jnp.dtype(jnp.float32)}
    assert logits.dtype == jnp.float32
    _, state = abstract_intermediates(model, x)
    assert state["intermediates"]["features"][0].dtype == jnp.bfloat16


@pytest.mark.parametrize("name", BATCHNORM_MODELS)
def test_training_updates_batch_statistics_and_eval_does_not(name):
    model, x = get_model(name, 10), images(name, size=8)
    variables = random_variables(model, x)
    _, trained = train_apply(model)(variables, x, 1)
    _, evaluated = model.apply(variables, x, mutable=["batch_stats"])
    before = jax.tree_util.tree_leaves(variables["batch_stats"])
    assert all(not np.allclose(a, b) for a, b in zip(before, jax.tree_util.tree_leaves(trained["batch_stats"])))
    assert all(np.array_equal(a, b) for a, b in zip(before, jax.tree_util.tree_leaves(evaluated["batch_stats"])))


def test_dropout_acts_in_training_only():
    model, x = get_model("simple_cnn", 10), images("simple_cnn", size=10)
    variables = random_variables(model, x)
    train = train_apply(model)
    assert not np.allclose(train(variables, x, 1)[0], train(variables, x, 2)[0])
    # In evaluation the dropout key changes nothing, and the model is the one without dropout.
    evaluate = jax.jit(lambda v, x, seed: model.apply(v, x, train=False, rngs={"dropout": jax.random.key(seed)}))
    without_dropout = get_model("simple_cnn", 10, dropout=0.0).apply(variables, x, train=False)
    np.testing.assert_array_equal(evaluate(variables, x, 1), evaluate(variables, x, 2))
    np.testing.assert_allclose(evaluate(variables, x, 1), without_dropout, rtol=1e-6, atol=1e-6)


def test_lenet5_pads_small_digits_to_32_and_keeps_61706_params():
    model = get_model("lenet5", 10)
    digits = images("lenet5", size=28)
    variables = random_variables(model, digits)
    assert count_params(variables["params"]) == 61_706
    padded = jnp.pad(digits, ((0, 0), (2, 2), (2, 2), (0, 0)))
    np.testing.assert_allclose(model.apply(variables, digits), model.apply(variables, padded), rtol=1e-6, atol=1e-6)


def test_cifar_resnet_with_circular_padding_is_invariant_to_shifts_by_its_stride():
    """Periodic convs commute with rolls by multiples of each stride; global pooling then forgets the shift.
    Zero ("symmetric") padding breaks this at the border, which the second assert checks."""
    x = images("resnet20", size=16, batch=1)
    pair = jnp.concatenate([x, jnp.roll(x, (4, -8), axis=(1, 2))])
    circular = get_model("resnet20", 10, padding_mode="circular")
    variables = random_variables(circular, pair)
    logits = circular.apply(variables, pair)
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-4, atol=1e-4)
    zero_padded = get_model("resnet20", 10).apply(variables, pair)
    assert np.abs(zero_padded[0] - zero_padded[1]).max() > 1e-2


def test_cifar_resnet_depth_must_be_6n_plus_2():
    with pytest.raises(ValueError, match=r"depth 6n \+ 2"):
        abstract_init(CifarResNet(10, depth=21), images("resnet20"))


def test_head_rejects_an_unknown_pool():
    with pytest.raises(ValueError, match="unknown head pool 'max'"):
        abstract_init(MLPHead(10, pool="max"), jnp.zeros((2, 4, 4, 8)))
