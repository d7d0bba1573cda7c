"""What an experiment is: a frozen dataclass config, each of its settings declared once (`cnn_jax.settings`).

`Experiment` (a zoo model trained from scratch) and its base `Training` hold the data (`cnn_jax.data.DataConfig`),
the engine's settings (`cnn_jax.train.TrainConfig`), the augmentations and where the command runs (`Run`, with the
process setup `Process`). Every leaf is a flag of the same flat name (`cnn_jax.cli`); the workdir records the
result-changing ones at the first start (`cnn_jax.run.workdir`). An experiment with settings of its own (a
transfer, a study) subclasses one of them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping, Optional

from cnn_jax.data import AugmentConfig, DataConfig
from cnn_jax.run.process import Process
from cnn_jax.settings import NOT_A_FLAG, bookkeeping, changed_default
from cnn_jax.train.config import TrainConfig

__all__ = ["AugmentConfig", "DataConfig", "Experiment", "Run", "TrainConfig", "Training"]


@dataclasses.dataclass(frozen=True)
class Run:
    """Where and how the command runs: nothing here changes what it computes (beyond rounding).

    Attributes:
      workdir: run directory: checkpoints, metrics, figures, results, export. Rerunning with the
        same workdir resumes.
      extend_epochs: accept a larger --epochs than the workdir's run was started with, to train a
        finished run on (its schedule is then recomputed over the new total).
      kernels: which kernels compute the ops (cnn_jax.ops.kernels): fast (oneDNN and joined kernels where
        they serve), separate (one kernel per op), portable (standard JAX only); default: $CNN_JAX_KERNELS, else
        fast.
      process: the process setup (`cnn_jax.run.setup_process`).
    """
    workdir: Optional[str] = bookkeeping(None)
    extend_epochs: bool = bookkeeping(False)
    kernels: Optional[Literal["fast", "separate", "portable"]] = bookkeeping(None)
    process: Process = Process()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Training:
    """A network trained on a dataset: what every experiment's config holds.

    Attributes:
      data: the dataset, its splits and batches.
      train: the optimizer, schedule, regularization and bookkeeping of the engine.
      run: where and how the command runs.
      augmentation: the train step's augmentations and their settings.
      normalization: what a network trained from scratch normalizes its input by: data (the
        per-channel mean and std of up to 10,000 seeded training images, computed once and kept in
        the workdir and the export) or model (the model's built-in constants).
      half_precision: compute in bfloat16 (params, optimizer state and the loss stay float32).
      model_kwargs: extra keyword arguments of the model's constructor (a study's arms).
    """
    data: DataConfig
    train: TrainConfig = TrainConfig()
    run: Run = Run()
    augmentation: AugmentConfig = AugmentConfig()
    normalization: Literal["data", "model"] = changed_default("data", absent="model")
    half_precision: bool = False
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict, metadata={NOT_A_FLAG: True})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Experiment(Training):
    """A zoo model trained from scratch.

    Attributes:
      model: model name from the zoo (cnn_jax.models.list_models()).
    """
    model: str
