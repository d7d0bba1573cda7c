"""What every image-classification experiment shares: flags, setup and the run itself.

An experiment is a `Recipe` (its dataset and recommended defaults) plus two lines:
`common.define_flags(RECIPE)` and `app.run(common.main)`. Every default can be overridden
by its flag; the flags in force are stored in the workdir's `flags.json` and `results.json`.
Every run ends by writing `<workdir>/export/` (`cnn_jax.export`), what inference needs.
"""
from __future__ import annotations

import dataclasses
import functools
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
    crop_padding: int = 4
    test_time_flip: bool = False
    test_time_shift: int = 0
    validation_fraction: float = 0.0
    eval_batch_size: int = 1000
    eval_every_epochs: int = 1


def define_flags(recipe: Recipe) -> None:
    """Defines the experiment flags with `recipe`'s values as defaults."""
    flags.DEFINE_string("model", recipe.model, "Model name from the zoo (cnn_jax.models).")
    flags.DEFINE_integer("image_size", None, "Resize images to this square size (aspect kept, "
                         "centre cropped); default: the dataset's own size.")
    define_engine_flags(recipe)


def define_engine_flags(recipe: Recipe) -> None:
    """The flags of data, training and bookkeeping, which every experiment shares."""
    from cnn_jax.train import OPTIMIZERS, SCHEDULES

    flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, figures, "
                        "results, export. Rerunning with the same workdir resumes.", required=True)
    flags.DEFINE_integer("epochs", recipe.epochs, "Passes over the training split.")
    flags.DEFINE_integer("batch_size", recipe.batch_size, "Global training batch size.")
    flags.DEFINE_integer("eval_batch_size", recipe.eval_batch_size, "Evaluation batch size.")
    flags.DEFINE_integer("eval_every_epochs", recipe.eval_every_epochs,
                         "Evaluate after every this many epochs (and after the last).")
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
    flags.DEFINE_integer("crop_padding", recipe.crop_padding,
                         "Pixels a random crop may shift an image by (zero padding on each side).")
    flags.DEFINE_bool("test_time_flip", recipe.test_time_flip,
                      "Evaluate on the mean logits of each image and its mirror image.")
    flags.DEFINE_integer("test_time_shift", recipe.test_time_shift,
                         "Also evaluate on each image translated this many pixels up-left and "
                         "down-right (half the weight); 0 for none.")
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
                        "host:port of process 0, for multi-host runs (jax.distributed); 'auto' on TPU pod "
                        "slices and SLURM/MPI clusters, which JAX detects.")
    flags.DEFINE_integer("num_processes", 1, "Processes in a multi-host run.")
    flags.DEFINE_integer("process_id", 0, "This process's index in a multi-host run.")
    flags.DEFINE_string("dataset", recipe.dataset, "TFDS dataset name, or the path of a folder "
                        "with one subfolder of images per class.")
    flags.DEFINE_bool("class_weights", False, "Weight each example's loss by the inverse "
                      "frequency of its class in the train split (for imbalanced data).")


def main(argv, run_experiment=None, report=None) -> None:
    """Runs the experiment the flags describe (with `run_experiment(flags)`, default `run`) and prints
    `report(results)` (default: test accuracy, time and speed); known failures print one message, exit 1."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # Quiets orbax's per-save INFO lines.
    logging.getLogger("cnn_jax").setLevel(logging.INFO)
    from cnn_jax.data import DatasetUnavailableError

    try:
        results = (run_experiment or run)(flags.FLAGS)
    except (ValueError, FloatingPointError, DatasetUnavailableError) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted: run the same command again to resume from the latest checkpoint")
    print((report or _report)(results))


def _report(results: dict) -> str:
    return (f"test accuracy {results['test_accuracy']:.4f} in {results['wall_time_s']:.1f} s "
            f"({results['train_images_per_sec']:,.0f} train images/s); "
            f"results in {os.path.join(flags.FLAGS.workdir, 'results.json')}")


def run(values: flags.FlagValues, fine_tuning_for=None, flags_record=None) -> dict:
    """Builds data, model and config from the flag values and trains; returns the results.

    Everything that can be checked without the data (config, augmentations, model name, batch
    sizes against the devices) is checked before the data is read. `fine_tuning_for(dataset)`,
    if given, returns the engine's FineTuning for the data read (a start that depends on it);
    `flags_record` is `train`'s.
    """
    from cnn_jax import data, models

    setup(values)
    config = train_config(values)
    augment = data.make_augment(values.augment, crop_padding=values.crop_padding)
    models.model_spec(values.model)
    check_batch_sizes(values)
    size = values.image_size
    dataset = data.load(data_config(values, None if size is None else (size, size)))
    return train(values, dataset, config, augment, values.model, {}, flags_record=flags_record,
                 fine_tuning=fine_tuning_for(dataset) if fine_tuning_for else None)


def setup(values: flags.FlagValues) -> None:
    """The persistent compilation cache, and joining a multi-host run; before any device use."""
    import jax

    from cnn_jax import train as engine

    if values.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", values.compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    engine.maybe_initialize_distributed(values.coordinator_address, values.num_processes,
                                        values.process_id)


def train_config(values: flags.FlagValues):
    """The engine's TrainConfig from the flags (validated as it is built)."""
    from cnn_jax import train as engine

    return engine.TrainConfig(
        epochs=values.epochs, learning_rate=values.learning_rate, optimizer=values.optimizer,
        momentum=values.momentum, schedule=values.schedule, warmup_epochs=values.warmup_epochs,
        weight_decay=values.weight_decay, label_smoothing=values.label_smoothing,
        seed=values.seed, log_every_steps=values.log_every_steps,
        checkpoint_every_steps=values.checkpoint_every_steps,
        keep_checkpoints=values.keep_checkpoints, test_time_flip=values.test_time_flip,
        test_time_shift=values.test_time_shift, eval_every_epochs=values.eval_every_epochs)


def check_batch_sizes(values: flags.FlagValues) -> None:
    from cnn_jax import train as engine

    mesh = engine.make_mesh()
    engine.check_batch_size(values.batch_size, mesh, "--batch_size")
    engine.check_batch_size(values.eval_batch_size, mesh, "--eval_batch_size")


def data_config(values: flags.FlagValues, image_size=None):
    from cnn_jax import data

    return data.DataConfig(
        values.dataset, data_dir=values.data_dir, batch_size=values.batch_size,
        eval_batch_size=values.eval_batch_size, image_size=image_size,
        validation_fraction=values.validation_fraction,
        num_train_examples=values.num_train_examples, seed=values.seed)


def train(values: flags.FlagValues, dataset, config, augment, model_name: str,
          model_kwargs: dict, *, workdir=None, flags_record=None, fine_tuning=None,
          start_time: float = START_TIME) -> dict:
    """Trains zoo model `model_name` (built with `model_kwargs`, in bfloat16 with
    --half_precision) on `dataset` in `workdir` (default --workdir) and exports it there.

    `flags_record` (default: `experiment_flags(values)`) goes to flags.json and results.json;
    `fine_tuning` is the engine's (a pretrained start, frozen parts); `start_time` (default: this
    process's start) is when the run's wall_time_s begins.
    """
    import jax

    from cnn_jax import export, models
    from cnn_jax import train as engine

    workdir = workdir or values.workdir
    info = dataset.info
    dtype = jax.numpy.bfloat16 if values.half_precision else jax.numpy.float32
    model = models.get_model(model_name, info.num_classes, **model_kwargs, dtype=dtype)
    class_weights = (engine.balanced_class_weights(dataset.train_class_counts())
                     if values.class_weights else None)
    save = functools.partial(export.save_export, workdir, model_name, model_kwargs,
                             class_names=info.class_names, image_shape=info.image_shape)
    return engine.train_and_evaluate(
        model, dataset, config, workdir, augment=augment,
        flags=experiment_flags(values) if flags_record is None else flags_record,
        start_time=start_time, fine_tuning=fine_tuning,
        class_weights=class_weights, export=save)


def experiment_flags(values: flags.FlagValues) -> dict:
    """The values of the experiment flags (those `define_flags` defines), by name."""
    return {flag.name: flag.value for flag in values.get_flags_for_module(__name__)}
