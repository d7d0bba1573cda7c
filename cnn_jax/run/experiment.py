"""An experiment's run around the engine: check everything that needs no data, claim the workdir, read the data,
train (`cnn_jax.train.train_and_evaluate`), report (`cnn_jax.run.report`)."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from cnn_jax import data, models
from cnn_jax import train as engine
from cnn_jax.run import workdir as workdir_lib
from cnn_jax.run.config import Experiment, Training
from cnn_jax.run.normalization import normalized
from cnn_jax.run.process import START_TIME
from cnn_jax.run.report import write_report


def train_experiment(config: Experiment, fine_tuning_for: Optional[Callable] = None,
                     extra: Optional[Mapping[str, Any]] = None) -> dict:
    """Checks the config, claims the workdir, reads the data and trains; returns the results.

    Everything that can be checked without the data (config, augmentations, model name, batch
    sizes against the devices, the workdir's recorded settings) is checked before the data is
    read. `fine_tuning_for(dataset, model_kwargs)`, if given, returns the engine's FineTuning for the data
    read and the model's final keyword arguments (a start that depends on them); `extra` settings join the
    record and the run's identity.
    """
    models.model_spec(config.model)
    check_batch_sizes(config.data)
    with workdir_lib.claim(config, config.run.workdir, extra) as record:
        dataset = data.load(config.data)
        kwargs = normalized(config, dataset, config.run.workdir, dict(config.model_kwargs))
        return train_model(config, dataset, config.model, kwargs, record,
                           fine_tuning=fine_tuning_for(dataset, kwargs) if fine_tuning_for else None)


def check_batch_sizes(data_config: data.DataConfig) -> None:
    """Raises ValueError, naming the flag, unless both batch sizes split evenly over the run's devices."""
    mesh = engine.make_mesh()
    engine.check_batch_size(data_config.batch_size, mesh, "--batch_size")
    engine.check_batch_size(data_config.resolved_eval_batch_size, mesh, "--eval_batch_size")


def train_model(config: Training, dataset, model_name: str, model_kwargs: dict, record: dict, *,
                workdir: Optional[str] = None, fine_tuning=None, start_time: float = START_TIME) -> dict:
    """Trains zoo model `model_name` (built with `model_kwargs`, in bfloat16 under half_precision) on
    `dataset` in `workdir` (default: the config's), then reports; returns the results.

    `record` (the claimed settings) goes into results.json; `fine_tuning` is the engine's (a
    pretrained start, frozen parts); `start_time` (default: this process's start) is when wall_time_s begins.
    """
    workdir = workdir or config.run.workdir
    if jax.process_index() == 0:
        workdir_lib.write_settings(workdir, record)
    dtype = jnp.bfloat16 if config.half_precision else jnp.float32
    model = models.get_model(model_name, dataset.info.num_classes, **model_kwargs, dtype=dtype)
    augment = data.build_augment(config.augmentation)
    outcome = engine.train_and_evaluate(model, dataset, config.train, workdir,
                                        augment=augment, start_time=start_time, fine_tuning=fine_tuning)
    results = {**outcome.results, "flags": record}
    if jax.process_index() == 0:
        write_report(workdir, outcome, results, dataset, model_name, model_kwargs)
    return results
