"""What every image-classification experiment shares: flags, setup and the run itself.

An experiment is a `Recipe` (its dataset and recommended defaults) plus two lines:
`common.define_flags(RECIPE)` and `app.run(common.main)`. Every default can be overridden
by its flag; the flags in force are stored in the workdir's `flags.json` and `results.json`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time

START_TIME = time.time()  # Before the heavy imports, so wall_time_s covers them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only reads data: quiet its logs.

from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "cnn_jax", "jax")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """An experiment's dataset and the defaults of its flags (its recommended recipe)."""
    dataset: str
    model: str
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    schedule: str
    warmup_epochs: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    augment: tuple[str, ...] = ()
    validation_fraction: float = 0.0
    eval_batch_size: int = 1000


def define_flags(recipe: Recipe) -> None:
    """Defines the experiment flags with `recipe`'s values as defaults."""
    from cnn_jax.train import OPTIMIZERS, SCHEDULES

    flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, figures, "
                        "results. Rerunning with the same workdir resumes.", required=True)
    flags.DEFINE_string("model", recipe.model, "Model name from the zoo (cnn_jax.models).")
    flags.DEFINE_integer("epochs", recipe.epochs, "Passes over the training split.")
    flags.DEFINE_integer("batch_size", recipe.batch_size, "Global training batch size.")
    flags.DEFINE_integer("eval_batch_size", recipe.eval_batch_size, "Evaluation batch size.")
    flags.DEFINE_float("learning_rate", recipe.learning_rate, "Peak learning rate.")
    flags.DEFINE_enum("optimizer", recipe.optimizer, OPTIMIZERS, "Optimizer.")
    flags.DEFINE_float("momentum", recipe.momentum, "Momentum of sgd/nesterov.")
    flags.DEFINE_enum("schedule", recipe.schedule, SCHEDULES, "Learning-rate schedule.")
    flags.DEFINE_float("warmup_epochs", recipe.warmup_epochs,
                       "Rising part of warmup_cosine and onecycle, in epochs.")
    flags.DEFINE_float("weight_decay", recipe.weight_decay,
                       "Weight decay on kernels (decoupled for adamw).")
    flags.DEFINE_float("label_smoothing", recipe.label_smoothing, "Label smoothing.")
    flags.DEFINE_list("augment", list(recipe.augment),
                      "Augmentations in order, from crop,flip,cutout; empty for none.")
    flags.DEFINE_integer("seed", 0, "Seed of init, data order, dropout and augmentation.")
    flags.DEFINE_string("data_dir", None,
                        "TFDS data dir (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets).")
    flags.DEFINE_bool("half_precision", False, "Compute in bfloat16 (params stay float32).")
    flags.DEFINE_integer("num_train_examples", None, "Train on a seeded subset of this size.")
    flags.DEFINE_float("validation_fraction", recipe.validation_fraction,
                       "Hold out this fraction of the training split for validation "
                       "(and keep the best checkpoint by it).")
    flags.DEFINE_integer("log_every_steps", 100, "Steps between metric logs.")
    flags.DEFINE_integer("checkpoint_every_steps", 0,
                         "Steps between checkpoints besides epoch ends; 0 for epoch ends only.")
    flags.DEFINE_integer("keep_checkpoints", 2, "Latest checkpoints kept for resuming.")
    flags.DEFINE_string("compilation_cache_dir", DEFAULT_CACHE_DIR,
                        "Persistent XLA compilation cache; empty to disable.")
    flags.DEFINE_string("coordinator_address", None,
                        "host:port of process 0, for multi-host runs (jax.distributed).")
    flags.DEFINE_integer("num_processes", 1, "Processes in a multi-host run.")
    flags.DEFINE_integer("process_id", 0, "This process's index in a multi-host run.")
    flags.DEFINE_string("dataset", recipe.dataset, "TFDS dataset name.")


def main(argv) -> None:
    """Runs the experiment the flags describe; known failures print one message, exit 1."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # Quiets orbax's per-save INFO lines.
    logging.getLogger("cnn_jax").setLevel(logging.INFO)
    from cnn_jax.data import DatasetUnavailableError

    try:
        results = run(flags.FLAGS)
    except (ValueError, FloatingPointError, DatasetUnavailableError) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted: run the same command again to resume from the latest checkpoint")
    print(f"test accuracy {results['test_accuracy']:.4f} in {results['wall_time_s']:.1f} s "
          f"({results['train_images_per_sec']:,.0f} train images/s); "
          f"results in {os.path.join(flags.FLAGS.workdir, 'results.json')}")


def run(values: flags.FlagValues) -> dict:
    """Builds data, model and config from the flag values and trains; returns the results.

    Everything that can be checked without the data (config, augmentations, model name, batch
    sizes against the devices) is checked before the data is read.
    """
    import jax

    from cnn_jax import data, models, train

    if values.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", values.compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    train.maybe_initialize_distributed(values.coordinator_address, values.num_processes,
                                       values.process_id)
    config = train.TrainConfig(
        epochs=values.epochs, learning_rate=values.learning_rate, optimizer=values.optimizer,
        momentum=values.momentum, schedule=values.schedule, warmup_epochs=values.warmup_epochs,
        weight_decay=values.weight_decay, label_smoothing=values.label_smoothing,
        seed=values.seed, log_every_steps=values.log_every_steps,
        checkpoint_every_steps=values.checkpoint_every_steps,
        keep_checkpoints=values.keep_checkpoints)
    augment = data.make_augment(values.augment)
    models.model_spec(values.model)
    mesh = train.make_mesh()
    train.check_batch_size(values.batch_size, mesh, "--batch_size")
    train.check_batch_size(values.eval_batch_size, mesh, "--eval_batch_size")
    dataset = data.load(data.DataConfig(
        values.dataset, data_dir=values.data_dir, batch_size=values.batch_size,
        eval_batch_size=values.eval_batch_size, validation_fraction=values.validation_fraction,
        num_train_examples=values.num_train_examples, seed=values.seed))
    dtype = jax.numpy.bfloat16 if values.half_precision else jax.numpy.float32
    model = models.get_model(values.model, dataset.info.num_classes, dtype=dtype)
    return train.train_and_evaluate(model, dataset, config, values.workdir, augment=augment,
                                    flags=experiment_flags(values), start_time=START_TIME)


def experiment_flags(values: flags.FlagValues) -> dict:
    """The values of the experiment flags (those `define_flags` defines), by name."""
    return {flag.name: flag.value for flag in values.get_flags_for_module(__name__)}
