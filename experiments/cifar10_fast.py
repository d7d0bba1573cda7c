"""CIFAR-10 fast: `python -m experiments.cifar10_fast --workdir=runs/cifar10_fast`.

The recipe for accuracy within an hour of a 2-core CPU, after airbench94 (Keller Jordan, 2024): its network at
half width (`airbench_half`: 32-128-128, 0.5M params, pooling straight after each stage's first conv) and its
test-time augmentation (`recipe` below has the settings and the result; RESULTS.md the time-to-accuracy curve).

`--whiten_stem` starts the network as airbench94 does: its 2x2 stem convolution is set to the whitening
transform of the 2x2 patches of the first 5,000 training images (in the epoch-0 order) and never trains.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
from absl import app

from experiments import common

WHITENING_IMAGES = 5000  # as airbench94
STEM = "stem"  # the whitened submodule: a 2x2 convolution with 2 x (2 * 2 * channels) filters


@dataclasses.dataclass(frozen=True, kw_only=True)
class FastExperiment(common.Experiment):
    """A zoo model trained from scratch, optionally from airbench94's whitened stem.

    Attributes:
      whiten_stem: set the model's 2x2 stem convolution to the whitening of the training images'
        2x2 patches and freeze it (airbench94); airbench models only.
    """
    whiten_stem: bool = False


def recipe() -> FastExperiment:
    """airbench_half, 40 epochs of one-cycle Nesterov SGD at batch 128 (peak 0.1 after 6), weight decay 5e-4,
    label smoothing 0.1, 4-px crops + flips, test-time flips and 1-px translations, evaluated every 4 epochs.

    90.42% on the offline JPEG copy of CIFAR-10 in 50.5 minutes for the whole command on the idle 2-core CPU
    (2026-12-02, RESULTS.md; without test-time augmentation 88.02%; normalized by the model's CIFAR-10
    constants, now `--normalization=model`):
    `python -m experiments.cifar10_fast --workdir=runs/cifar10_fast`.
    """
    return FastExperiment(
        model="airbench_half",
        data=common.DataConfig("cifar10", batch_size=128, eval_batch_size=1000),
        train=common.TrainConfig(epochs=40, learning_rate=0.1, optimizer="nesterov", schedule="onecycle",
                                 warmup_epochs=6, weight_decay=5e-4, label_smoothing=0.1, test_time_flip=True,
                                 test_time_shift=1, eval_every_epochs=4),
        augmentation=common.AugmentConfig(("crop", "flip"), crop_padding=4))


def run(config: FastExperiment) -> dict:
    whitening = functools.partial(whitened_stem, _check_stem(config.model)) if config.whiten_stem else None
    return common.run(config, whitening)


def _check_stem(name: str):
    """The zoo model `name`, which must start with a whitenable stem (ValueError otherwise)."""
    import jax
    import jax.numpy as jnp

    from cnn_jax import models

    model, spec = models.get_model(name, 10), models.model_spec(name)
    channels = spec.input_shape[-1]
    images = jax.ShapeDtypeStruct((1, *spec.input_shape), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
    shape = getattr(params.get(STEM, {}).get("kernel"), "shape", None)
    if shape != (2, 2, channels, 8 * channels) or not hasattr(model, "mean"):
        raise ValueError(f"--whiten_stem needs a model that normalizes its input and starts with a 2x2 "
                         f"convolution named {STEM!r} with {8 * channels} filters, as airbench and airbench_half "
                         f"do; {name} has {STEM} kernel shape {shape}: drop --whiten_stem or use an airbench model")
    return model


def whitened_stem(model, dataset):
    """The engine's FineTuning that starts `model` (an airbench net) with its stem set to the whitening
    of the first WHITENING_IMAGES training images, normalized as the model normalizes them, and frozen."""
    from cnn_jax import ops
    from cnn_jax import train as engine

    images, count = [], 0
    for batch in dataset.train_batches(0):
        images.append(batch["image"])
        count += len(batch["image"])
        if count >= WHITENING_IMAGES:
            break
    images = np.concatenate(images)[:WHITENING_IMAGES]
    normalized = (images - np.asarray(model.mean, np.float32)) / np.asarray(model.std, np.float32)
    kernel = ops.patch_whitening_kernel(normalized, 2)
    return engine.FineTuning({"params": {STEM: {"kernel": kernel}}}, frozen=(STEM,))


if __name__ == "__main__":
    common.define_flags(recipe())
    app.run(functools.partial(common.main, recipe=recipe(), run_experiment=run))
