"""Model comparisons: `python -m experiments.compare --workdir=runs/cifar10_h2h --study=cifar10_head_to_head`.

Studies (`--study`):
  cifar10_head_to_head  mlp vs cnn3 vs resnet20 on CIFAR-10, 10 epochs each. cnn3 and resnet20 train
                        with experiments/cifar10.py's recipe (Nesterov one-cycle, weight decay 5e-4,
                        label smoothing 0.1, crop + flip), the MLP with Adam 1e-3 under one-cycle and
                        flips; all three normalize by CIFAR-10's channel statistics.
  cifar10_zoo           every model of the zoo on CIFAR-10 for 5 epochs of experiments/cifar10.py's
                        recipe (alexnet_mini, without BatchNorm, at a peak learning rate of 0.02; the
                        MLP as in the head-to-head). The ImageNet models train from scratch at 32x32,
                        where their 32x downsampling leaves a 1x1 map: their CIFAR-10 numbers worth
                        having come from transfer learning (experiments/transfer.py). Hours
                        on the 2-core CPU (RESULTS.md's 19 arms took 243 min): run it in
                        parts with --arms.
  cifar10_tricks        experiments/cifar10_fast.py's recipe (airbench_half) for 8 epochs, then the same with
                        one of the engine's training tricks each: an EMA of the weights, lookahead, mixup,
                        cutmix, TrivialAugment, RandAugment, random-resized-crop, gradient clipping and
                        gradient accumulation (each trick's flag, exercised; not tuned).
  mnist_sweep           simple_cnn on MNIST with experiments/mnist.py's recipe at 2 epochs of batch 32, changing
                        one design choice at a time against the default (32-64 filters, 3x3 kernels,
                        max pooling, ReLU): 16-32 and 64-128 filters, 5x5 kernels, average pooling,
                        tanh, GELU.

Each arm is an ordinary training run in `<workdir>/<arm>/` (checkpoints, metrics, results.json,
figures, export): rerunning the command resumes an interrupted arm and only reads back a finished
one. Engine flags (those of experiments/mnist.py, listed by `--helpfull`) given on the command
line apply to every arm, e.g. `--epochs=1 --num_train_examples=1000` for a quick look; those left
out take each arm's recipe (its warmup scaled to the study's epochs), whatever default
`--helpfull` lists. An arm whose directory holds a run with other result-changing settings is an
error, never silently mixed in (a setting its record predates counts as its old default);
`--arms` runs and tabulates a subset.

The study writes `<workdir>/comparison.json`, `comparison.md` (arm, setting, parameters, test
accuracy, train images/s, wall time) and `comparison.png` (accuracy against size and speed). An
arm's wall time runs from building its model to its export: imports and the data loading that
the arms share stay out of it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any, Mapping, Optional

from cnn_jax import cli, data, export, ops, run, settings
from cnn_jax.plots.comparison import plot_comparison
from cnn_jax.settings import bookkeeping
from cnn_jax.workdir_files import COMPARISON_FIGURE, COMPARISON_JSON, COMPARISON_TABLE, RESULTS_FILE
from experiments import cifar10, cifar10_fast, mnist

log = logging.getLogger("cnn_jax.compare")

# Per-channel mean and standard deviation of CIFAR-10's 50,000 training images, in [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclasses.dataclass(frozen=True)
class Arm:
    """One training run of a study: `recipe` (its model and model_kwargs included), and its row."""
    name: str  # its subdirectory and its row in the table
    setting: str  # what sets it apart, for the table
    recipe: run.Experiment


@dataclasses.dataclass(frozen=True)
class Study:
    """Arms trained for the same number of epochs on the same data, then tabulated and plotted."""
    name: str
    title: str
    epochs: int
    arms: tuple[Arm, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Comparison(run.Experiment):
    """A study: its arms' recipes, with the engine flags given on the command line applied to each.

    Attributes:
      study: the comparison to run (cifar10_head_to_head, cifar10_zoo, mnist_sweep).
      arms: run and tabulate only these arms of the study (default: all), e.g. to train one arm
        at a time.
    """
    study: Optional[str] = bookkeeping(None)
    arms: Optional[tuple[str, ...]] = bookkeeping(None)


_CIFAR10_STATS = {"mean": CIFAR10_MEAN, "std": CIFAR10_STD}
_MLP_CIFAR10 = run.Experiment(
    model="mlp", data=run.DataConfig("cifar10", batch_size=128, eval_batch_size=1000),
    train=run.TrainConfig(epochs=30, learning_rate=1e-3, optimizer="adam", schedule="onecycle",
                             warmup_epochs=5, label_smoothing=0.1),
    augmentation=run.AugmentConfig(("flip",)))
# Without BatchNorm alexnet_mini learns slower at the recipe's peak of 0.1: 24.9% against 35.9% at 0.02 after
# `python -m experiments.cifar10 --model=alexnet_mini --learning_rate=... --num_train_examples=10000 --epochs=2
# --warmup_epochs=0.4` (lenet5, also without it, did better at 0.1: 40.0% against 37.4%).
_ALEXNET_CIFAR10 = settings.replace(cifar10.recipe(), learning_rate=0.02)
# The MNIST recipe as it was when the sweep was recorded (RESULTS.md, 2026-11): 2 epochs at batch 32, one step per call.
_SWEEP = settings.replace(mnist.recipe(), epochs=2, batch_size=32, steps_per_execution=1)
_FAST = cifar10_fast.recipe()


def _arm(name: str, setting: str, recipe: run.Experiment, model: Optional[str] = None,
         **model_kwargs) -> Arm:
    return Arm(name, setting, dataclasses.replace(recipe, model=model or recipe.model, model_kwargs=model_kwargs))


def _zoo_arm(model: str, setting: str, recipe: Optional[run.Experiment] = None) -> Arm:
    """Zoo ``model`` on CIFAR-10 under ``recipe`` (default: the cifar10 recipe)."""
    return _arm(model, setting, recipe or cifar10.recipe(), model, **_CIFAR10_STATS)


STUDIES = {study.name: study for study in (
    Study("cifar10_head_to_head", "CIFAR-10: MLP vs CNN vs ResNet", 10, (
        _arm("mlp", "2x512 ReLU, dropout 0.2", _MLP_CIFAR10, **_CIFAR10_STATS),
        _arm("cnn3", "3 blocks of 2 conv-BN-ReLU, 32/64/128", cifar10.recipe(), **_CIFAR10_STATS),
        _arm("resnet20", "3 stages of 3 basic blocks, 16/32/64", cifar10.recipe(), "resnet20", **_CIFAR10_STATS),
    )),
    Study("cifar10_zoo", "CIFAR-10: every zoo model, 5 epochs of the cifar10 recipe", 5, (
        _zoo_arm("mlp", "2x512 ReLU, dropout 0.2 (Adam)", _MLP_CIFAR10),
        _zoo_arm("simple_cnn", "MNIST's 2-conv Keras example"),
        _zoo_arm("lenet5", "6-16-120-84, tanh, average pooling, no BN"),
        _zoo_arm("alexnet_mini", "5 convs, 1024-1024 dropout head, no BN (lr 0.02)", _ALEXNET_CIFAR10),
        _zoo_arm("vgg_mini", "VGG-16's first 3 stages, 64-128-256, BN"),
        _zoo_arm("cnn3", "3 blocks of 2 conv-BN-ReLU, 32/64/128"),
        _zoo_arm("airbench_half", "airbench94's net at 32-128-128"),
        _zoo_arm("airbench", "airbench94's net at 64-256-256"),
        _zoo_arm("resnet20", "CIFAR ResNet, 3 blocks per stage"),
        _zoo_arm("resnet32", "CIFAR ResNet, 5 blocks per stage"),
        _zoo_arm("resnet44", "CIFAR ResNet, 7 blocks per stage"),
        _zoo_arm("resnet56", "CIFAR ResNet, 9 blocks per stage"),
        _zoo_arm("resnet18", "ImageNet ResNet, basic blocks [2, 2, 2, 2]"),
        _zoo_arm("resnet34", "ImageNet ResNet, basic blocks [3, 4, 6, 3]"),
        _zoo_arm("resnet50", "ImageNet ResNet, bottlenecks [3, 4, 6, 3]"),
        _zoo_arm("mobilenet_v2", "ImageNet MobileNetV2, inverted residuals"),
        _zoo_arm("efficientnet_lite0", "ImageNet EfficientNet-Lite0, from scratch"),
        _zoo_arm("efficientnet_lite1", "ImageNet EfficientNet-Lite1, from scratch"),
        _zoo_arm("efficientnet_lite2", "ImageNet EfficientNet-Lite2, from scratch"),
    )),
    Study("cifar10_tricks", "CIFAR-10: airbench_half with one training trick at a time", 8, (
        _arm("baseline", "the fast recipe at 8 epochs", _FAST),
        _arm("ema", "EMA of the weights, decay 0.999", settings.replace(_FAST, ema_decay=0.999)),
        _arm("lookahead", "lookahead, k=5, alpha 0.5", settings.replace(_FAST, lookahead_steps=5)),
        _arm("mixup", "mixup, alpha 0.2", settings.replace(_FAST, mixup_alpha=0.2)),
        _arm("cutmix", "cutmix, alpha 1.0", settings.replace(_FAST, cutmix_alpha=1.0)),
        _arm("trivialaugment", "TrivialAugment after crop + flip",
             settings.replace(_FAST, augment=("crop", "flip", "trivialaugment"))),
        _arm("randaugment", "RandAugment (2 ops, magnitude 9) after crop + flip",
             settings.replace(_FAST, augment=("crop", "flip", "randaugment"))),
        _arm("random_resized_crop", "random-resized-crop (scale 0.35-1) + flip",
             settings.replace(_FAST, augment=("random_resized_crop", "flip"), resized_crop_scale=(0.35, 1.0))),
        _arm("grad_clip", "gradient clipping at global norm 1", settings.replace(_FAST, grad_clip_norm=1.0)),
        _arm("accumulate", "2 batches of 64 accumulated per update", settings.replace(
            _FAST, batch_size=64, accumulate_steps=2)),
    )),
    Study("mnist_sweep", "MNIST: simple_cnn, one design choice at a time", _SWEEP.train.epochs, (
        _arm("default", "32-64 filters, 3x3, max pool, ReLU", _SWEEP),
        _arm("filters_16_32", "16-32 filters", _SWEEP, features=(16, 32)),
        _arm("filters_64_128", "64-128 filters", _SWEEP, features=(64, 128)),
        _arm("kernel_5", "5x5 kernels", _SWEEP, kernel_size=5),
        _arm("avg_pool", "average pooling", _SWEEP, pooling="avg"),
        _arm("tanh", "tanh", _SWEEP, activation="tanh"),
        _arm("gelu", "GELU", _SWEEP, activation="gelu"),
    )),
)}


def recipe() -> Comparison:
    """The engine flags' defaults shown by --help are experiments/mnist.py's; each arm uses its own recipe."""
    return Comparison(**{f.name: getattr(_SWEEP, f.name) for f in dataclasses.fields(_SWEEP)})


@dataclasses.dataclass(frozen=True)
class _Plan:
    """An arm made concrete by the flags: where it runs and its config, checked."""
    arm: Arm
    workdir: str
    config: run.Experiment
    extra: dict  # the study and the arm, in its record


def train_experiment(config: Comparison, given: Optional[Mapping[str, Any]] = None) -> dict:
    """Plans and checks every arm, trains those not finished, and writes the comparison; returns it.

    `given` are the settings set on the command line (default: read from the flags). Every check
    that needs no data (configs, augmentations, batch sizes, the settings of runs already in the
    workdir) is made for all arms before the first one trains.
    """
    if config.study not in STUDIES:
        raise ValueError(f"--study={config.study!r} is not a study: choose one of {', '.join(STUDIES)}")
    study = STUDIES[config.study]
    arms = select_arms(study, config.arms)
    given = cli.given(run.Experiment) if given is None else dict(given)
    plans = []
    for arm in arms:
        arm_config = arm_recipe(study, arm, given)
        workdir = os.path.join(config.run.workdir, arm.name)
        arm_config = settings.replace(arm_config, workdir=workdir)
        run.check_batch_sizes(arm_config.data)
        plan = _Plan(arm, workdir, arm_config, {"study": study.name, "arm": arm.name})
        run.check_workdir(plan.config, workdir, plan.extra)
        plans.append(plan)
    for number, plan in enumerate(plans, start=1):
        if _finished(plan.workdir):
            log.info("arm %d/%d: %s is done, reading %s", number, len(plans), plan.arm.name, plan.workdir)
            continue
        log.info("arm %d/%d: %s (%s) in %s", number, len(plans), plan.arm.name, plan.arm.setting, plan.workdir)
        with run.claim(plan.config, plan.workdir, plan.extra) as record:
            dataset = _load(plan.config.data)
            run.train_model(plan.config, dataset, plan.config.model, dict(plan.config.model_kwargs), record,
                            start_time=time.time())  # The arm's wall time starts here: data loading is shared.
    return write_comparison(config.run.workdir, study, [_row(plan) for plan in plans])


def select_arms(study: Study, names) -> tuple[Arm, ...]:
    """The arms of `study` named in `names`, in the study's order; all of them for None."""
    if names is not None and not names:
        raise ValueError("--arms is empty: name at least one arm, or leave the flag out for all of them")
    known = {arm.name for arm in study.arms}
    unknown = [name for name in names or () if name not in known]
    if unknown:
        raise ValueError(f"--arms names {unknown}, which study {study.name} lacks: choose from "
                         f"{', '.join(arm.name for arm in study.arms)}")
    return tuple(arm for arm in study.arms if names is None or arm.name in names)


def arm_recipe(study: Study, arm: Arm, given: Mapping[str, Any]) -> run.Experiment:
    """The config `arm` trains with: its recipe at the study's epochs, its warmup scaled alike so that it
    stays the same fraction of the run, then the settings `given` on the command line."""
    recipe_train = arm.recipe.train
    values = {"epochs": study.epochs,
              "warmup_epochs": recipe_train.warmup_epochs * given.get("epochs", study.epochs) / recipe_train.epochs}
    values.update({name: value for name, value in given.items() if name not in ("study", "arms", "workdir")})
    return settings.replace(arm.recipe, **values)


def _finished(workdir: str) -> bool:
    """Results written and the export complete (its meta.json is written last)."""
    return (os.path.exists(os.path.join(workdir, RESULTS_FILE))
            and os.path.exists(os.path.join(export.export_dir(workdir), export.META_FILE)))


@functools.lru_cache(maxsize=1)
def _load(data_config):
    """The dataset, read once for consecutive arms that batch it alike."""
    return data.load(data_config)


def _row(plan: "_Plan") -> dict:
    """The arm's line of the comparison, from its results.json and its exported parameters."""
    with open(os.path.join(plan.workdir, RESULTS_FILE)) as f:
        results = json.load(f)
    _, variables, _ = export.load_export(plan.workdir)
    return {
        "arm": plan.arm.name, "model": plan.config.model, "setting": plan.arm.setting,
        "model_kwargs": dict(plan.config.model_kwargs), "params": ops.count_params(variables["params"]),
        "test_accuracy": results["test_accuracy"], "train_images_per_sec": results["train_images_per_sec"],
        "wall_time_s": results["wall_time_s"], "epochs": results["flags"]["epochs"],
        "workdir": plan.workdir,
    }


def write_comparison(workdir: str, study: Study, rows: list[dict]) -> dict:
    """Writes comparison.json, comparison.md and comparison.png into `workdir`; returns the JSON's content."""
    comparison = {"study": study.name, "title": study.title, "arms": rows}
    with open(os.path.join(workdir, COMPARISON_JSON), "w") as f:
        json.dump(comparison, f, indent=2)
    with open(os.path.join(workdir, COMPARISON_TABLE), "w") as f:
        f.write(markdown_table(study.title, rows))
    plot_comparison(rows, os.path.join(workdir, COMPARISON_FIGURE), study.title)
    return comparison


def markdown_table(title: str, rows: list[dict]) -> str:
    """A heading and one table line per arm; the best test accuracy in bold."""
    best = max(row["test_accuracy"] for row in rows)
    lines = [f"## {title}", "",
             "| arm | model | setting | params | test accuracy | train img/s | wall time (s) | epochs |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        accuracy = f"{100 * row['test_accuracy']:.2f}%"
        if row["test_accuracy"] == best:
            accuracy = f"**{accuracy}**"
        lines.append(f"| {row['arm']} | {row['model']} | {row['setting']} | {row['params']:,} | {accuracy} | "
                     f"{row['train_images_per_sec']:,.0f} | {row['wall_time_s']:.1f} | {row['epochs']} |")
    return "\n".join(lines) + "\n"


def _report(comparison: dict, config: Comparison) -> str:
    return (markdown_table(comparison["title"], comparison["arms"])
            + f"comparison in {os.path.join(config.run.workdir, COMPARISON_TABLE)} (.json, .png)")


if __name__ == "__main__":
    run.main(recipe, train_experiment, _report)
