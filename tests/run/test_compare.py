"""Tests of `experiments/compare.py`, the simple_cnn design fields its sweep varies, and its figure.

The arms' models and recipes are checked in-process for every arm of both studies (parameter counts by
`jax.eval_shape`, recipes by building their TrainConfig); the studies run end to end, as a user types
them, on a few hundred images of the shared data (generated images when it is absent), with a subset
of arms each so that the file stays near a minute and a half on a busy 2-core CPU.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PARAMS as SMALL_PARAMS
from helpers import PUBLISHED_COUNTS, SHARED_DATA, data_dir_for, experiment, random_variables, run
from matplotlib.image import imread

from cnn_jax import ops, settings
from cnn_jax.models import get_model, list_models
from cnn_jax.plots.comparison import plot_comparison
from experiments import cifar10, compare, mnist

# Each arm's parameters with 10 classes, worked out by hand: convs k*k*in*out + out, the dense head
# flatten*10 + 10 (VALID 3x3 convs leave 5x5 maps of 28x28 digits, 5x5 convs 4x4), the MLP on
# 32x32x3 3072*512+512 + 512*512+512 + 512*10+10; cnn3 and resnet20 as test_models.py pins them.
PARAMS = {
    ("cifar10_head_to_head", "mlp"): 1_841_162, ("cifar10_head_to_head", "cnn3"): 551_018,
    ("cifar10_head_to_head", "resnet20"): 269_722,
    ("mnist_sweep", "default"): 34_826, ("mnist_sweep", "filters_16_32"): 12_810,
    ("mnist_sweep", "filters_64_128"): 106_506, ("mnist_sweep", "kernel_5"): 62_346,
    ("mnist_sweep", "avg_pool"): 34_826, ("mnist_sweep", "tanh"): 34_826, ("mnist_sweep", "gelu"): 34_826,
}
# The zoo on 32x32x3 with 10 classes: the CIFAR-sized models as test_models.py pins them at that input; simple_cnn
# and lenet5 as pinned there on one channel plus the first conv's two extra input channels (3*3*2*32, 5*5*2*6)
# and, for simple_cnn, a 6x6 map instead of 5x5 before its head (11*64*10); mlp as above; the ImageNet models
# at their published counts less 990 of the head's classes, (features + 1) each (they end in global pooling).
ZOO_HEAD_FEATURES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "mobilenet_v2": 1280,
                     "efficientnet_lite0": 1280, "efficientnet_lite1": 1280, "efficientnet_lite2": 1280}
PARAMS.update({("cifar10_zoo", name): count for name, count in SMALL_PARAMS.items() if name != "mlp"})
PARAMS.update({
    ("cifar10_zoo", "mlp"): PARAMS["cifar10_head_to_head", "mlp"],
    ("cifar10_zoo", "simple_cnn"): SMALL_PARAMS["simple_cnn"] + 3 * 3 * 2 * 32 + 11 * 64 * 10,
    ("cifar10_zoo", "lenet5"): SMALL_PARAMS["lenet5"] + 5 * 5 * 2 * 6,
})
PARAMS.update({("cifar10_zoo", name): published - 990 * (ZOO_HEAD_FEATURES[name] + 1)
               for name, kwargs, published, _ in PUBLISHED_COUNTS if not kwargs and name in ZOO_HEAD_FEATURES})
PARAMS.update({("cifar10_tricks", arm.name): SMALL_PARAMS["airbench_half"]
               for arm in compare.STUDIES["cifar10_tricks"].arms})
INPUT_SHAPES = {"cifar10_head_to_head": (32, 32, 3), "cifar10_zoo": (32, 32, 3), "cifar10_tricks": (32, 32, 3),
                "mnist_sweep": (28, 28, 1)}
ARMS = [(study.name, arm) for study in compare.STUDIES.values() for arm in study.arms]
TINY = ["--epochs=1", "--num_train_examples=256", "--batch_size=32", "--log_every_steps=4",
        "--compilation_cache_dir="]


def count(model, shape) -> int:
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *shape)))
    return ops.count_params(variables["params"])


# --- the arms ----------------------------------------------------------------------------------------------

def test_every_study_arm_is_listed_here():
    assert {(study, arm.name) for study, arm in ARMS} == set(PARAMS)


@pytest.mark.parametrize("study,arm", ARMS, ids=lambda a: getattr(a, "name", a))
def test_each_arm_builds_its_model_with_the_expected_parameters(study, arm):
    model = get_model(arm.recipe.model, 10, **arm.recipe.model_kwargs)
    assert count(model, INPUT_SHAPES[study]) == PARAMS[study, arm.name]


@pytest.mark.parametrize("study,arm", ARMS, ids=lambda a: getattr(a, "name", a))
@pytest.mark.parametrize("given", [{}, {"epochs": 1}])
def test_each_arms_recipe_is_a_valid_config_at_the_study_and_the_smoke_size(study, arm, given):
    config = compare.arm_recipe(compare.STUDIES[study], arm, given)  # ValueError for a recipe the engine refuses
    assert config.train.epochs == given.get("epochs", compare.STUDIES[study].epochs)
    assert config.model == arm.recipe.model and config.model_kwargs == arm.recipe.model_kwargs


def test_the_zoo_study_trains_every_registered_model_with_the_cifar10_recipe():
    study = compare.STUDIES["cifar10_zoo"]
    assert [arm.name for arm in study.arms if arm.name == arm.recipe.model] == [arm.name for arm in study.arms]
    assert sorted(arm.name for arm in study.arms) == list_models()
    for arm in study.arms:
        assert arm.recipe.model_kwargs == {"mean": compare.CIFAR10_MEAN, "std": compare.CIFAR10_STD}
        recipe = {"mlp": compare._MLP_CIFAR10}.get(arm.name, cifar10.recipe())
        if arm.name == "alexnet_mini":  # no BatchNorm: a lower peak learning rate
            recipe = settings.replace(recipe, learning_rate=0.02)
        assert dataclasses.replace(arm.recipe, model=recipe.model, model_kwargs={}) == recipe, arm.name


def test_arm_recipe_is_the_recipe_at_the_study_epochs_unless_given():
    study = compare.STUDIES["cifar10_head_to_head"]
    mlp, cnn3, _ = study.arms
    config = compare.arm_recipe(study, cnn3, {})  # cifar10.recipe(): 30 epochs, 5 of warmup, nesterov
    assert (config.train.epochs, config.train.warmup_epochs, config.train.optimizer) == (10, 5 * 10 / 30, "nesterov")
    assert config.augmentation.augment == ("crop", "flip") and config.data.dataset == "cifar10"
    assert compare.arm_recipe(study, mlp, {}).train.optimizer == "adam"
    config = compare.arm_recipe(study, cnn3, {"epochs": 1, "learning_rate": 0.01})
    assert (config.train.epochs, config.train.warmup_epochs, config.train.learning_rate) == (1, 5 / 30, 0.01)
    assert compare.arm_recipe(study, cnn3, {"warmup_epochs": 0.5}).train.warmup_epochs == 0.5


def test_the_tricks_study_changes_one_setting_per_arm_from_the_fast_recipe():
    study = compare.STUDIES["cifar10_tricks"]
    base = settings.flatten(study.arms[0].recipe)
    for arm in study.arms[1:]:
        changed = {k for k, v in settings.flatten(arm.recipe).items() if base[k] != v}
        assert changed and changed <= {"ema_decay", "lookahead_steps", "mixup_alpha", "cutmix_alpha", "augment",
                                       "resized_crop_scale", "grad_clip_norm", "batch_size",
                                       "accumulate_steps"}, arm.name
    assert {arm.name for arm in study.arms} >= {"ema", "lookahead", "mixup", "cutmix", "trivialaugment",
                                                 "randaugment", "random_resized_crop", "grad_clip", "accumulate"}


def test_select_arms_keeps_the_study_order_and_names_unknown_arms():
    study = compare.STUDIES["mnist_sweep"]
    assert [a.name for a in compare.select_arms(study, ["gelu", "default"])] == ["default", "gelu"]
    assert compare.select_arms(study, None) == study.arms
    with pytest.raises(ValueError, match=r"--arms names \['relu6'\].*choose from default, filters_16_32"):
        compare.select_arms(study, ["relu6"])
    with pytest.raises(ValueError, match="--arms is empty"):
        compare.select_arms(study, [])


# --- simple_cnn's design fields -------------------------------------------------------------------------------

def test_simple_cnn_activates_before_pooling_unless_the_two_commute():
    """Pooling first (4x fewer activations) is exact only for max pooling and a monotone activation; every
    other pair must activate first. Checked on the first stage against ops, for every pooling x activation."""
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 12, 12, 1)), jnp.float32)
    variables = random_variables(get_model("simple_cnn", 10), x)
    kernel, bias = (variables["params"]["conv1"][k] for k in ("kernel", "bias"))
    conv = ops.conv2d((x - 0.1307) / 0.3081, kernel, bias, padding="VALID")
    for pooling, pool in (("max", ops.max_pool), ("avg", ops.avg_pool)):
        for name, activation in (("relu", jax.nn.relu), ("tanh", jnp.tanh), ("gelu", jax.nn.gelu)):
            model = get_model("simple_cnn", 10, pooling=pooling, activation=name)
            _, state = jax.jit(functools.partial(model.apply, mutable=["intermediates"]))(variables, x)
            stage1 = state["intermediates"]["stage1"][0]
            np.testing.assert_allclose(stage1, pool(activation(conv), 2), rtol=1e-5, atol=1e-6)
            commute = np.allclose(activation(pool(conv, 2)), pool(activation(conv), 2), atol=1e-6)
            assert commute == (pooling == "max" and name in ("relu", "tanh")), (pooling, name)


@pytest.mark.parametrize("kwargs,message", [
    ({"features": ()}, "features must be a non-empty sequence of positive ints"),
    ({"features": (32, 0)}, "features must be a non-empty sequence of positive ints"),
    ({"kernel_size": 0}, "kernel_size must be a positive int"),
    ({"pooling": "median"}, r"pooling 'median' is unknown: use one of \('max', 'avg'\)"),
    ({"activation": "swish"}, "activation 'swish' is unknown: use one of"),
    ({"kernel_size": 5}, "needs images of at least 16x16 pixels, got 15x15"),
])
def test_bad_simple_cnn_designs_get_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        count(get_model("simple_cnn", 10, **kwargs), (15, 15, 1))


# --- the figure -----------------------------------------------------------------------------------------------

def test_plot_comparison_writes_a_png_and_rejects_what_it_cannot_place(tmp_path):
    rows = [{"arm": "a", "params": 1_000, "test_accuracy": 0.9, "train_images_per_sec": 50.0},
            {"arm": "b", "params": 2_000_000, "test_accuracy": 0.95, "train_images_per_sec": 5_000.0}]
    assert imread(plot_comparison(rows, tmp_path / "sub" / "c.png", "title")).ndim == 3
    with pytest.raises(ValueError, match="at least one row"):
        plot_comparison([], tmp_path / "empty.png")
    with pytest.raises(ValueError, match=r"lacks \['params'\]"):
        plot_comparison([{"arm": "a", "test_accuracy": 0.5, "train_images_per_sec": 1.0}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="arm 'a' has train_images_per_sec=0.0; it must be positive"):
        plot_comparison([{**rows[0], "train_images_per_sec": 0.0}], tmp_path / "x.png")


# --- the studies, end to end ----------------------------------------------------------------------------------

def read_json(path):
    with open(path) as f:
        return json.load(f)


def check_comparison(workdir, study: str, arms: list[str]) -> dict:
    """comparison.json/.md/.png agree with each other and with every arm's own run; returns the JSON."""
    comparison = read_json(workdir / "comparison.json")
    assert comparison["study"] == study and [row["arm"] for row in comparison["arms"]] == arms
    table = (workdir / "comparison.md").read_text().splitlines()
    assert table[2].startswith("| arm | model | setting | params | test accuracy |") and len(table) == 4 + len(arms)
    for row, line in zip(comparison["arms"], table[4:]):
        results = read_json(workdir / row["arm"] / "results.json")
        assert row["test_accuracy"] == results["test_accuracy"] and row["wall_time_s"] == results["wall_time_s"]
        assert results["flags"]["arm"] == row["arm"] and results["flags"]["epochs"] == row["epochs"] == 1
        assert row["params"] == PARAMS[study, row["arm"]] and f"| {row['params']:,} |" in line
        assert f"{100 * row['test_accuracy']:.2f}%" in line
    best = max(comparison["arms"], key=lambda row: row["test_accuracy"])
    assert f"**{100 * best['test_accuracy']:.2f}%**" in table[4 + comparison["arms"].index(best)]
    assert imread(workdir / "comparison.png").ndim == 3
    return comparison


@pytest.mark.slow
def test_mnist_sweep_trains_its_arms_then_a_rerun_reads_them_back(tmp_path):
    workdir = tmp_path / "sweep"
    command = experiment("compare", f"--workdir={workdir}", "--study=mnist_sweep", "--arms=default,kernel_5",
                         f"--data_dir={data_dir_for('mnist', tmp_path)}", *TINY)
    proc = run(command)
    assert proc.returncode == 0, proc.stderr[-3000:]
    comparison = check_comparison(workdir, "mnist_sweep", ["default", "kernel_5"])
    flags = read_json(workdir / "kernel_5" / "flags.json")  # the MNIST recipe, the arm's model, --epochs
    assert (flags["optimizer"], flags["model"], flags["model_kwargs"]) == ("adam", "simple_cnn", {"kernel_size": 5})
    recipe = mnist.recipe().train  # its warmup, scaled from the sweep's 2 epochs to the study's single epoch
    assert flags["warmup_epochs"] == pytest.approx(recipe.warmup_epochs / 2)
    assert flags["steps_per_execution"] == 1 and mnist.recipe().train.steps_per_execution > 1
    assert "| kernel_5 | simple_cnn | 5x5 kernels | 62,346 |" in proc.stdout
    if flags["data_dir"] == SHARED_DATA:  # Real digits: even 8 steps learn something.
        assert comparison["arms"][0]["test_accuracy"] > 0.5

    written = {arm: os.path.getmtime(workdir / arm / "results.json") for arm in ("default", "kernel_5")}
    rerun = run(command)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stderr.count("is done, reading") == 2 and "epoch 1/1" not in rerun.stderr
    assert {arm: os.path.getmtime(workdir / arm / "results.json") for arm in written} == written
    assert check_comparison(workdir, "mnist_sweep", ["default", "kernel_5"]) == comparison

    other = run([part.replace("--epochs=1", "--epochs=2") for part in command])
    assert other.returncode == 1 and "Traceback" not in other.stderr
    assert "default holds a run started with other settings (epochs: 1 then, 2 now; warmup_epochs: " in other.stderr


@pytest.mark.slow  # long end-to-end run; `python -m pytest -m slow`
def test_cifar10_head_to_head_gives_each_arm_its_recipe(tmp_path):
    workdir = tmp_path / "h2h"
    proc = run(experiment("compare", f"--workdir={workdir}", "--study=cifar10_head_to_head", "--arms=mlp",
                          f"--data_dir={data_dir_for('cifar10', tmp_path)}", *TINY))
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_comparison(workdir, "cifar10_head_to_head", ["mlp"])
    flags = read_json(workdir / "mlp" / "flags.json")
    assert (flags["optimizer"], flags["learning_rate"], flags["augment"]) == ("adam", 1e-3, ["flip"])
    assert flags["model_kwargs"] == {"mean": list(compare.CIFAR10_MEAN), "std": list(compare.CIFAR10_STD)}
