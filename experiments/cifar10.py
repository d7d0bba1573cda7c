"""CIFAR-10: `python -m experiments.cifar10 --workdir=runs/cifar10`.

Any zoo model runs with `--model`, e.g. resnet20; every setting of `cnn_jax.run.Experiment` is a flag
(`--help`). For accuracy per minute see `experiments/cifar10_fast.py`.
"""
from __future__ import annotations

from cnn_jax import run


def recipe() -> run.Experiment:
    """cnn3 (three conv-BN blocks with dropout): 30 epochs of Nesterov SGD at batch 128 under a one-cycle
    schedule (peak 0.1 after 5 epochs), weight decay 5e-4, label smoothing 0.1, random crop + flip,
    test-time flips.

    85.18% on the offline JPEG copy in 48 minutes on the 2-core CPU, about 90 s an epoch (625
    images/s) (2026-12-01, RESULTS.md, with cnn3's constant normalization 0.5/0.25, now `--normalization=model`):
    `python -m experiments.cifar10 --workdir=runs/cifar10`.
    """
    return run.Experiment(
        model="cnn3",
        data=run.DataConfig("cifar10", batch_size=128, eval_batch_size=1000),
        train=run.TrainConfig(epochs=30, learning_rate=0.1, optimizer="nesterov", schedule="onecycle",
                              warmup_epochs=5, weight_decay=5e-4, label_smoothing=0.1,
                              test_time_flip=True),
        augmentation=run.AugmentConfig(("crop", "flip")))


if __name__ == "__main__":
    run.main(recipe)
