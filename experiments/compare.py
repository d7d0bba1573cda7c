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
  mnist_sweep           simple_cnn on MNIST with experiments/mnist.py's recipe (2 epochs), changing
                        one design choice at a time against the default (32-64 filters, 3x3 kernels,
                        max pooling, ReLU): 16-32 and 64-128 filters, 5x5 kernels, average pooling,
                        tanh, GELU.

Each arm is an ordinary training run in `<workdir>/<arm>/` (checkpoints, metrics, results.json,
figures, export): rerunning the command resumes an interrupted arm and only reads back a finished
one. Engine flags (those of experiments/mnist.py, listed by `--helpfull`) given on the command
line apply to every arm, e.g. `--epochs=1 --num_train_examples=1000` for a quick look; those left
out take each arm's recipe (its warmup scaled to the study's epochs), whatever default
`--helpfull` lists. An arm whose directory holds a run with other settings is an error, never
silently mixed in; `--arms` runs and tabulates a subset.

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
from typing import TYPE_CHECKING, Any, Mapping

from absl import app, flags

from experiments import cifar10, common, mnist

if TYPE_CHECKING:  # The library is imported when a study runs, so that --help stays quick.
    from cnn_jax.data import DataConfig
    from cnn_jax.train import TrainConfig

log = logging.getLogger("cnn_jax.compare")

# Per-channel mean and standard deviation of CIFAR-10's 50,000 training images, in [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# The engine flags a recipe sets (the model is the arm's own, not a flag).
RECIPE_FLAGS = tuple(f.name for f in dataclasses.fields(common.Recipe) if f.name != "model")
# What decides an arm's result: a rerun must match the run already in the arm's directory on these.
RUN_SETTINGS = tuple(f.name for f in dataclasses.fields(common.Recipe)
                     if f.name not in ("eval_batch_size", "eval_every_epochs")) + (
    "model_kwargs", "num_train_examples", "seed", "half_precision")


@dataclasses.dataclass(frozen=True)
class Arm:
    """One training run of a study: `recipe.model` built with `model_kwargs`, trained by `recipe`."""
    name: str  # its subdirectory and its row in the table
    setting: str  # what sets it apart, for the table
    recipe: common.Recipe
    model_kwargs: Mapping = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Study:
    """Arms trained for the same number of epochs on the same data, then tabulated and plotted."""
    name: str
    title: str
    epochs: int
    arms: tuple[Arm, ...]


_CIFAR10_STATS = {"mean": CIFAR10_MEAN, "std": CIFAR10_STD}
_MLP_CIFAR10 = common.Recipe(dataset="cifar10", model="mlp", epochs=30, batch_size=128,
                             learning_rate=1e-3, optimizer="adam", schedule="onecycle",
                             warmup_epochs=5, label_smoothing=0.1, augment=("flip",))
# Without BatchNorm alexnet_mini learns slower at the recipe's peak of 0.1: 24.9% against 35.9% at 0.02 after
# `python -m experiments.cifar10 --model=alexnet_mini --learning_rate=... --num_train_examples=10000 --epochs=2
# --warmup_epochs=0.4` (lenet5, also without it, did better at 0.1: 40.0% against 37.4%).
_ALEXNET_CIFAR10 = dataclasses.replace(cifar10.RECIPE, learning_rate=0.02)
_SWEEP = mnist.RECIPE


def _zoo_arm(model: str, setting: str, recipe: common.Recipe = cifar10.RECIPE) -> Arm:
    return Arm(model, setting, dataclasses.replace(recipe, model=model), _CIFAR10_STATS)


STUDIES = {study.name: study for study in (
    Study("cifar10_head_to_head", "CIFAR-10: MLP vs CNN vs ResNet", 10, (
        Arm("mlp", "2x512 ReLU, dropout 0.2", _MLP_CIFAR10, _CIFAR10_STATS),
        Arm("cnn3", "3 blocks of 2 conv-BN-ReLU, 32/64/128", cifar10.RECIPE, _CIFAR10_STATS),
        Arm("resnet20", "3 stages of 3 basic blocks, 16/32/64",
            dataclasses.replace(cifar10.RECIPE, model="resnet20"), _CIFAR10_STATS),
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
    Study("mnist_sweep", "MNIST: simple_cnn, one design choice at a time", _SWEEP.epochs, (
        Arm("default", "32-64 filters, 3x3, max pool, ReLU", _SWEEP),
        Arm("filters_16_32", "16-32 filters", _SWEEP, {"features": (16, 32)}),
        Arm("filters_64_128", "64-128 filters", _SWEEP, {"features": (64, 128)}),
        Arm("kernel_5", "5x5 kernels", _SWEEP, {"kernel_size": 5}),
        Arm("avg_pool", "average pooling", _SWEEP, {"pooling": "avg"}),
        Arm("tanh", "tanh", _SWEEP, {"activation": "tanh"}),
        Arm("gelu", "GELU", _SWEEP, {"activation": "gelu"}),
    )),
)}


def define_flags() -> None:
    common.define_engine_flags(_SWEEP)
    flags.DEFINE_enum("study", None, list(STUDIES), "The comparison to run.", required=True)
    flags.DEFINE_list("arms", None, "Run and tabulate only these arms of the study (default: all), "
                      "e.g. to train one arm at a time.")


@dataclasses.dataclass(frozen=True)
class _Plan:
    """An arm made concrete by the flags: where it runs and everything it needs, checked."""
    arm: Arm
    workdir: str
    record: dict  # its flags.json / results.json "flags"
    config: TrainConfig
    augment: Any  # cnn_jax.data.make_augment's function, or None
    data_config: DataConfig


def run(values: flags.FlagValues) -> dict:
    """Plans and checks every arm, trains those not finished, and writes the comparison; returns it.

    Every check that needs no data (configs, augmentations, batch sizes, the settings of runs
    already in the workdir) is made for all arms before the first one trains.
    """
    study = STUDIES[values.study]
    arms = select_arms(study, values.arms)
    common.setup(values)
    plans = [_plan(values, study, arm) for arm in arms]
    for number, plan in enumerate(plans, start=1):
        if _finished(plan.workdir):
            log.info("arm %d/%d: %s is done, reading %s", number, len(plans), plan.arm.name, plan.workdir)
            continue
        log.info("arm %d/%d: %s (%s) in %s", number, len(plans), plan.arm.name, plan.arm.setting, plan.workdir)
        dataset = _load(plan.data_config)
        common.train(values, dataset, plan.config, plan.augment, plan.arm.recipe.model,
                     dict(plan.arm.model_kwargs), workdir=plan.workdir, flags_record=plan.record,
                     start_time=time.time())  # The arm's wall time starts here: data loading is shared.
    return write_comparison(values.workdir, study, [_row(plan) for plan in plans])


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


def arm_flags(study: Study, arm: Arm, given: Mapping[str, Any]) -> dict:
    """The values of the recipe flags (RECIPE_FLAGS) that `arm` trains with.

    `given` (the flags set on the command line) wins; the rest is the arm's recipe at the study's
    epochs, its warmup scaled alike so that it stays the same fraction of the run.
    """
    values = {name: getattr(arm.recipe, name) for name in RECIPE_FLAGS}
    values.update(epochs=study.epochs, augment=list(arm.recipe.augment))
    values.update(given)
    if "warmup_epochs" not in given:
        values["warmup_epochs"] = arm.recipe.warmup_epochs * values["epochs"] / arm.recipe.epochs
    return values


def _plan(values: flags.FlagValues, study: Study, arm: Arm) -> _Plan:
    """Sets the recipe flags to `arm`'s values, then checks and records them."""
    from cnn_jax import data

    given = {name: values[name].value for name in RECIPE_FLAGS if values[name].present}
    for name, value in arm_flags(study, arm, given).items():
        setattr(values, name, value)
    workdir = os.path.join(values.workdir, arm.name)
    record = {**common.experiment_flags(values), "workdir": workdir, "model": arm.recipe.model,
              "model_kwargs": dict(arm.model_kwargs), "study": study.name, "arm": arm.name}
    _check_same_settings(workdir, record)
    config = common.train_config(values)
    augment = data.make_augment(values.augment, crop_padding=values.crop_padding)
    common.check_batch_sizes(values)
    return _Plan(arm, workdir, record, config, augment, common.data_config(values))


def _check_same_settings(workdir: str, record: dict) -> None:
    """Raises ValueError if `workdir` holds a run whose RUN_SETTINGS differ from `record`'s."""
    path = os.path.join(workdir, "flags.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        before = json.load(f)
    now = json.loads(json.dumps(record))  # tuples as lists, as flags.json holds them
    changed = [f"{key}={before.get(key)!r} then, {now[key]!r} now" for key in RUN_SETTINGS
               if before.get(key) != now[key]]
    if changed:
        raise ValueError(f"{workdir} holds a run of arm {record['arm']!r} with other settings "
                         f"({'; '.join(changed)}): rerun with the flags it was started with, use "
                         f"another --workdir, or delete {workdir} to train the arm again")


def _finished(workdir: str) -> bool:
    """Results written and the export complete (its meta.json is written last)."""
    from cnn_jax import export

    return (os.path.exists(os.path.join(workdir, "results.json"))
            and os.path.exists(os.path.join(export.export_dir(workdir), export.META_FILE)))


@functools.lru_cache(maxsize=1)
def _load(data_config):
    """The dataset, read once for consecutive arms that batch it alike."""
    from cnn_jax import data

    return data.load(data_config)


def _row(plan: _Plan) -> dict:
    """The arm's line of the comparison, from its results.json and its exported parameters."""
    from cnn_jax import export, ops

    with open(os.path.join(plan.workdir, "results.json")) as f:
        results = json.load(f)
    _, variables, _ = export.load_export(plan.workdir)
    return {
        "arm": plan.arm.name, "model": plan.arm.recipe.model, "setting": plan.arm.setting,
        "model_kwargs": dict(plan.arm.model_kwargs), "params": ops.count_params(variables["params"]),
        "test_accuracy": results["test_accuracy"], "train_images_per_sec": results["train_images_per_sec"],
        "wall_time_s": results["wall_time_s"], "epochs": results["flags"]["epochs"],
        "workdir": plan.workdir,
    }


def write_comparison(workdir: str, study: Study, rows: list[dict]) -> dict:
    """Writes comparison.json, comparison.md and comparison.png into `workdir`; returns the JSON's content."""
    from cnn_jax.plots.comparison import plot_comparison

    comparison = {"study": study.name, "title": study.title, "arms": rows}
    with open(os.path.join(workdir, "comparison.json"), "w") as f:
        json.dump(comparison, f, indent=2)
    with open(os.path.join(workdir, "comparison.md"), "w") as f:
        f.write(markdown_table(study.title, rows))
    plot_comparison(rows, os.path.join(workdir, "comparison.png"), study.title)
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


def _report(comparison: dict) -> str:
    return (markdown_table(comparison["title"], comparison["arms"])
            + f"comparison in {os.path.join(flags.FLAGS.workdir, 'comparison.md')} (.json, .png)")


if __name__ == "__main__":
    define_flags()
    app.run(functools.partial(common.main, run_experiment=run, report=_report))
