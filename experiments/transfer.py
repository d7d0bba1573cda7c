"""Transfer learning: `python -m experiments.transfer --workdir=runs/flowers`.

Adapts an ImageNet-pretrained backbone (`--backbone`, one of `cnn_jax.pretrained.list_pretrained()`) to a
new dataset: a tfds name or a folder with one subfolder of images per class (`--dataset=/path/to/photos`;
split 80/20 into train and test with a fixed seed, `--validation_fraction` of train held out for choosing).
The pretrained classifier is replaced by a fresh one with the dataset's classes; the rest starts from the
pretrained variables (converted once and cached under `--cache_dir`).

`--mode`:
  feature_extract  only the new head trains; the backbone is frozen (its BatchNorm layers in inference mode).
  fine_tune        the head and the backbone's last `--unfreeze` stages (default: all) train, the backbone at
                   `--backbone_learning_rate`.
  two_phase        feature extraction for `--feature_extract_epochs` (in `<workdir>/feature_extract/`), then
                   fine-tuning from its result for `--epochs` (in `<workdir>`); rerun to resume either phase.
`--from_scratch` trains the same architecture from random initialization instead: the baseline (its
BatchNorm statistics averaged with momentum 0.9, which short runs from random weights need).

The defaults are the tf_flowers recipe with EfficientNet-Lite0 at its native 224x224: Adam, head learning rate
1e-3 under a cosine schedule, batch 32, random crop + flip, 5 epochs. CIFAR-10, 92.47% in 91 minutes on the 2-core
CPU (RESULTS.md): `--dataset=cifar10 --image_size=128 --mode=fine_tune --epochs=4 --backbone_learning_rate=3e-4
--schedule=warmup_cosine --warmup_epochs=0.25 --test_time_flip`. Every run writes `<workdir>/export/`, so
`scripts/predict.py --workdir=...` classifies new images.
"""
import dataclasses
import functools
import os

from absl import app, flags

from experiments import common

RECIPE = common.Recipe(dataset="tf_flowers", model="efficientnet_lite0", epochs=5, batch_size=32,
                       learning_rate=1e-3, optimizer="adam", schedule="cosine", augment=("crop", "flip"),
                       eval_batch_size=64)
MODES = ("feature_extract", "fine_tune", "two_phase")
FEATURE_EXTRACT_DIR = "feature_extract"  # the first phase's workdir inside a two-phase run's
BACKBONE_RATE_FRACTION = 0.1  # the backbone's default learning rate, as a fraction of the head's
# BatchNorm momentum of a from-scratch baseline. From random weights the network changes too fast for the 0.99 of
# TF-ported backbones: after 5 epochs on tf_flowers EfficientNet-Lite0's running statistics gave 25.9% test
# accuracy where statistics of one train batch gave 72.2% (2026-12-01).
FROM_SCRATCH_BN_MOMENTUM = 0.9
TRANSFER_FLAGS = ("backbone", "mode", "unfreeze", "backbone_learning_rate", "feature_extract_epochs",
                  "cache_dir", "from_scratch")


def define_flags() -> None:
    common.define_engine_flags(RECIPE)
    flags.DEFINE_string("backbone", RECIPE.model, "Pretrained network, one of cnn_jax.pretrained."
                        "list_pretrained() (e.g. efficientnet_lite0, resnet18, mobilenet_v2).")
    flags.DEFINE_enum("mode", "feature_extract", MODES, "What trains: the head only, the head and the "
                      "backbone's last --unfreeze stages, or the first then the second.")
    flags.DEFINE_integer("unfreeze", None, "Number of the backbone's last stages that train when "
                         "fine-tuning; default: all of them.")
    flags.DEFINE_float("backbone_learning_rate", None, "Peak learning rate of the trained backbone "
                       f"stages; default: {BACKBONE_RATE_FRACTION} x --learning_rate (the head's).")
    flags.DEFINE_integer("feature_extract_epochs", 2, "Epochs of the feature-extraction phase of "
                         "--mode=two_phase (--epochs counts the fine-tuning phase).")
    flags.DEFINE_integer("image_size", None, "Square input size; default: the backbone's native one.")
    flags.DEFINE_string("cache_dir", None, "Where converted weights are cached; default ~/.cache/cnn_jax.")
    flags.DEFINE_bool("from_scratch", False, "Train the backbone's architecture from random "
                      "initialization (the baseline); --mode is then ignored.")


def _check_modes(values) -> None:
    if values.from_scratch and (values.unfreeze is not None or values.backbone_learning_rate is not None):
        raise ValueError("--from_scratch trains the whole network at --learning_rate: drop --unfreeze and "
                         "--backbone_learning_rate, or drop --from_scratch to start from pretrained weights")
    if not values.from_scratch and values.mode == "feature_extract" and values.unfreeze:
        raise ValueError(f"--unfreeze={values.unfreeze} with --mode=feature_extract, which trains only the head: "
                         "use --mode=fine_tune or --mode=two_phase to train backbone stages")
    if values.image_size is not None and values.image_size < 1:
        raise ValueError(f"--image_size={values.image_size} must be a positive number of pixels, e.g. 224")
    if values.feature_extract_epochs < 1:
        raise ValueError(f"--feature_extract_epochs={values.feature_extract_epochs} must be at least 1")


def run(values: flags.FlagValues) -> dict:
    """Checks the flags and loads the backbone's weights, then reads the data and trains (one or two phases)."""
    from cnn_jax import data, export, pretrained
    from cnn_jax import train as engine

    common.setup(values)
    spec = pretrained.pretrained_spec(values.backbone)
    _check_modes(values)
    config = common.train_config(values)
    augment = data.make_augment(values.augment, crop_padding=values.crop_padding)
    common.check_batch_sizes(values)
    size = values.image_size or spec.image_size
    image_shape = (size, size, 3)
    record = {**common.experiment_flags(values), **{name: values[name].value for name in TRANSFER_FLAGS},
              "image_size": size}  # the size in force, which experiments/visualize.py reads back
    train = functools.partial(common.train, model_name=spec.model, model_kwargs=dict(spec.model_kwargs),
                              augment=augment, flags_record=record)
    if values.from_scratch:
        return train(values, _load(values, size), config,
                     model_kwargs={**spec.model_kwargs, "bn_momentum": FROM_SCRATCH_BN_MOMENTUM})

    _, variables = pretrained.load_pretrained(values.backbone, cache_dir=values.cache_dir)
    model = spec.build()
    backbone_rate = values.backbone_learning_rate or BACKBONE_RATE_FRACTION * values.learning_rate
    unfreeze = 0 if values.mode == "feature_extract" else values.unfreeze
    tuning = engine.fine_tuning(model, image_shape, variables, unfreeze, backbone_rate)
    dataset = _load(values, size)
    if values.mode == "two_phase":
        first = os.path.join(values.workdir, FEATURE_EXTRACT_DIR)
        train(values, dataset, dataclasses.replace(config, epochs=values.feature_extract_epochs), workdir=first,
              fine_tuning=engine.fine_tuning(model, image_shape, variables, 0))
        _, trained, _ = export.load_export(first)
        tuning = dataclasses.replace(tuning, variables=trained)
    return train(values, dataset, config, fine_tuning=tuning)


def _load(values, size: int):
    from cnn_jax import data

    dataset = data.load(common.data_config(values, (size, size)))
    channels = dataset.info.image_shape[-1]
    if channels != 3:
        raise ValueError(f"pretrained backbones take RGB images, but {values.dataset} has {channels} channel(s)")
    return dataset


if __name__ == "__main__":
    define_flags()
    app.run(functools.partial(common.main, run_experiment=run))
