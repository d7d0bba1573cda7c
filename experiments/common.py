"""What every image-classification experiment shares: its config, its flags, the run and the report.

An experiment is a recipe, a function returning an `Experiment` whose docstring gives its command
and measured result, plus two lines: `common.define_flags(recipe())` and
`app.run(functools.partial(common.main, recipe=recipe()))`. Each setting is declared once, as a
field of `Experiment`, `cnn_jax.data.DataConfig` or `cnn_jax.train.TrainConfig`; its flag (same
flat name, the recipe's value as default) is generated from it (`cnn_jax.cli`). The workdir
records the settings at the first start and refuses a rerun that changes a result-changing one
(`cnn_jax.train.workdir`). Every run ends by writing `results.json`, then `<workdir>/export/`
(`cnn_jax.export`), then the figures: a figure that fails is logged and skipped.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import threading
import time
from typing import Any, Callable, Literal, Mapping, Optional

START_TIME = time.time()  # Before the heavy imports, so wall_time_s covers them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only reads data: quiet its logs.

from absl import app  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from cnn_jax import cli, settings  # noqa: E402
from cnn_jax.data import AugmentConfig, DataConfig  # noqa: E402
from cnn_jax.settings import NOT_A_FLAG, bookkeeping, changed_default  # noqa: E402
from cnn_jax.train.config import TrainConfig  # noqa: E402

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "cnn_jax", "jax")
GRID_IMAGES = 24  # Test images in the prediction grid, up to half of them mistakes.
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped by a signal with a checkpoint saved; rerun to resume.
log = logging.getLogger("cnn_jax.experiments")


@dataclasses.dataclass(frozen=True)
class Run:
    """Where and how the command runs: nothing here changes what it computes.

    Attributes:
      workdir: run directory: checkpoints, metrics, figures, results, export. Rerunning with the
        same workdir resumes.
      compilation_cache_dir: persistent XLA compilation cache; empty to disable.
      coordinator_address: host:port of process 0, for multi-process runs (jax.distributed);
        'auto' on TPU pod slices and SLURM/MPI clusters, which JAX detects.
      num_processes: processes in a multi-process run.
      process_id: this process's index in a multi-process run.
      heartbeat_timeout_s: a multi-process run stops when a process has not been heard from for
        this many seconds.
      initialization_timeout_s: seconds to wait for every process of a multi-process run to join.
      extend_epochs: accept a larger --epochs than the workdir's run was started with, to train a
        finished run on (its schedule is then recomputed over the new total).
    """
    workdir: Optional[str] = bookkeeping(None)
    compilation_cache_dir: str = bookkeeping(DEFAULT_CACHE_DIR)
    coordinator_address: Optional[str] = bookkeeping(None)
    num_processes: int = bookkeeping(1)
    process_id: int = bookkeeping(0)
    heartbeat_timeout_s: int = bookkeeping(100)
    initialization_timeout_s: int = bookkeeping(300)
    extend_epochs: bool = bookkeeping(False)


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

    def __post_init__(self):
        # Checked before the processes join: an error after joining races the coordinator's exit.
        processes = self.run.num_processes
        sizes = {"batch_size": self.data.batch_size, "eval_batch_size": self.data.resolved_eval_batch_size}
        for name, size in sizes.items():
            if processes > 1 and size % processes:
                raise ValueError(f"--{name} {size} is not divisible by the {processes} processes of "
                                 f"--num_processes: use a multiple of {processes}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Experiment(Training):
    """A zoo model trained from scratch.

    Attributes:
      model: model name from the zoo (cnn_jax.models.list_models()).
    """
    model: str


def define_flags(recipe: Training) -> None:
    """Defines a flag for every setting of `recipe`, with its value as the default; --workdir is required."""
    cli.define_flags(recipe, required=("workdir",))


def main(argv, recipe: Training, run_experiment: Optional[Callable] = None,
         report: Optional[Callable[[dict, Training], str]] = None, flag_values=None) -> None:
    """Runs `run_experiment(config)` (default `run`) on the recipe as the flags (default: absl's global
    ones) change it and prints `report(results, config)`; a known failure prints one `error:` line and
    exits 1, a signal that stopped the run at a checkpoint exits PREEMPTED_EXIT_CODE."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # Quiets orbax's per-save INFO lines.
    logging.getLogger("absl").addFilter(_without_orbax_tracebacks)
    threading.excepthook = _log_thread_failure
    logging.getLogger("cnn_jax").setLevel(logging.INFO)
    from cnn_jax.data import DatasetUnavailableError
    from cnn_jax.train import CheckpointError, Preempted
    from cnn_jax.train.workdir import WorkdirBusy

    try:
        config = cli.parse(recipe) if flag_values is None else cli.parse(recipe, flag_values)
        results = (run_experiment or run)(config)
    except Preempted as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_CODE)
    except (ValueError, FloatingPointError, DatasetUnavailableError, WorkdirBusy, CheckpointError) as error:
        from cnn_jax.train.sharding import exit_with_error  # a multi-process run leaves without waiting for the others

        exit_with_error(f"error: {error}")
    except OSError as error:
        sys.exit(f"error: {describe_os_error(error)}")
    except KeyboardInterrupt:
        sys.exit("interrupted: run the same command again to resume from the latest checkpoint")
    print((report or _report)(results, config))


def _without_orbax_tracebacks(record: logging.LogRecord) -> bool:
    """Keeps orbax's background-thread errors to their one log line: the engine re-raises each as an error
    that says what to do, so their tracebacks would only bury it."""
    if "orbax" in record.pathname:
        record.exc_info = record.exc_text = None
    return True


def _log_thread_failure(args) -> None:
    """A background thread's failure as one log line: the main thread reports what it means."""
    log.warning("background thread %s failed: %s: %s", getattr(args.thread, "name", "?"),
                args.exc_type.__name__, args.exc_value)


def describe_os_error(error: OSError) -> str:
    """One line for a failed file operation: what, where, and what to do."""
    import errno

    where = f" ({error.filename})" if error.filename else ""
    advice = {errno.ENOSPC: "free disk space or use a --workdir on another disk, then rerun to resume",
              errno.EFBIG: "the file size limit was reached: raise it (ulimit -f) or free space, then rerun",
              errno.EACCES: "fix the permissions or choose another path",
              errno.EROFS: "the filesystem is read-only: choose a writable --workdir",
              errno.ENOTDIR: "choose a directory path"}.get(error.errno, "check the path and rerun")
    return f"{error.strerror or error}{where}: {advice}"


def _report(results: dict, config: Training) -> str:
    import jax

    if jax.process_index() != 0:
        return f"process {jax.process_index()} done; process 0 wrote the results"
    speed = results["train_images_per_sec"]  # 0 when the first call (compiling) was the only one
    return (f"test accuracy {results['test_accuracy']:.4f} in {results['wall_time_s']:.1f} s "
            f"({f'{speed:,.0f} train images/s' if speed else 'too few train calls to time'}); "
            f"results in {os.path.join(config.run.workdir, 'results.json')}")


def run(config: Experiment, fine_tuning_for: Optional[Callable] = None,
        extra: Optional[Mapping[str, Any]] = None) -> dict:
    """Checks the config, claims the workdir, reads the data and trains; returns the results.

    Everything that can be checked without the data (config, augmentations, model name, batch
    sizes against the devices, the workdir's recorded settings) is checked before the data is
    read. `fine_tuning_for(dataset, model_kwargs)`, if given, returns the engine's FineTuning for the data
    read and the model's final keyword arguments (a start that depends on them); `extra` settings join the
    record and the run's identity.
    """
    from cnn_jax import data, models

    setup(config.run)
    models.model_spec(config.model)
    check_batch_sizes(config.data)
    with claim(config, config.run.workdir, extra) as record:
        dataset = data.load(config.data)
        kwargs = normalized(config, dataset, config.run.workdir, dict(config.model_kwargs))
        return train(config, dataset, config.model, kwargs, record,
                     fine_tuning=fine_tuning_for(dataset, kwargs) if fine_tuning_for else None)


NORMALIZATION_FILE = "normalization.json"


def normalized(config: Training, dataset, workdir: str, model_kwargs: dict) -> dict:
    """`model_kwargs` with the input statistics of `config.normalization`: for "data", the training images'
    per-channel mean and std, computed at the first start and read back from the workdir after (unless the
    kwargs fix them, as a study's arms may). The export pins them either way."""
    import jax

    from cnn_jax import data
    from cnn_jax.files import write_json

    if config.normalization == "model" or "mean" in model_kwargs or "std" in model_kwargs:
        return model_kwargs
    path = os.path.join(workdir, NORMALIZATION_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
    else:
        mean, std = data.channel_statistics(dataset)
        stats = {"mean": mean, "std": std, "images": min(data.STATISTICS_IMAGES, dataset.info.num_train)}
        if jax.process_index() == 0:
            write_json(path, stats)
    log.info("normalizing by the training images' mean %s and std %s",
             [round(m, 4) for m in stats["mean"]], [round(s, 4) for s in stats["std"]])
    return {**model_kwargs, "mean": tuple(stats["mean"]), "std": tuple(stats["std"])}


def setup(run_config: Run) -> None:
    """The persistent compilation cache, and joining a multi-process run; before any device use."""
    import jax

    from cnn_jax import train as engine

    if run_config.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", run_config.compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    engine.maybe_initialize_distributed(
        run_config.coordinator_address, run_config.num_processes, run_config.process_id,
        heartbeat_timeout_s=run_config.heartbeat_timeout_s,
        initialization_timeout_s=run_config.initialization_timeout_s)


def check_batch_sizes(data_config: DataConfig) -> None:
    from cnn_jax import train as engine

    mesh = engine.make_mesh()
    engine.check_batch_size(data_config.batch_size, mesh, "--batch_size")
    engine.check_batch_size(data_config.resolved_eval_batch_size, mesh, "--eval_batch_size")


def _settings(config: Training, workdir: str, extra: Optional[Mapping[str, Any]]):
    """(record, identity, absent) of `config` with `extra` settings, for the workdir's check."""
    extra = dict(extra or {})
    if config.model_kwargs:
        extra["model_kwargs"] = dict(config.model_kwargs)
    identity = settings.identity(config, extra)
    record = {**settings.flatten(config), **identity, "workdir": workdir}
    absent = {**settings.absent_defaults(type(config)), "model_kwargs": {}}
    return record, identity, absent


def check_workdir(config: Training, workdir: str, extra: Optional[Mapping[str, Any]] = None) -> None:
    """Raises SettingsChanged if `workdir` holds a run started with other result-changing settings."""
    from cnn_jax.train import workdir as workdir_lib

    record, identity, absent = _settings(config, workdir, extra)
    workdir_lib.check_settings(workdir, record, identity, absent, extend_epochs=config.run.extend_epochs)


def claim(config: Training, workdir: str, extra: Optional[Mapping[str, Any]] = None):
    """The workdir's lock and settings check for `config` (plus `extra` settings, such as a study's
    arm), as a context manager that yields the record `train` keeps in flags.json."""
    import jax

    from cnn_jax.train import workdir as workdir_lib

    record, identity, absent = _settings(config, workdir, extra)
    return workdir_lib.claim(workdir, record, identity, absent, extend_epochs=config.run.extend_epochs,
                             chief=jax.process_index() == 0)


def train(config: Training, dataset, model_name: str, model_kwargs: dict, record: dict, *,
          workdir: Optional[str] = None, fine_tuning=None, start_time: float = START_TIME) -> dict:
    """Trains zoo model `model_name` (built with `model_kwargs`, in bfloat16 under half_precision) on
    `dataset` in `workdir` (default: the config's), then reports; returns the results.

    `record` (the claimed settings) goes into results.json; `fine_tuning` is the engine's (a
    pretrained start, frozen parts); `start_time` (default: this process's start) is when wall_time_s begins.
    """
    import jax

    from cnn_jax import data, models
    from cnn_jax import train as engine

    from cnn_jax.train import workdir as workdir_lib

    workdir = workdir or config.run.workdir
    if jax.process_index() == 0:
        workdir_lib.write_settings(workdir, record)
    dtype = jax.numpy.bfloat16 if config.half_precision else jax.numpy.float32
    model = models.get_model(model_name, dataset.info.num_classes, **model_kwargs, dtype=dtype)
    augment = data.build_augment(config.augmentation)
    outcome = engine.train_and_evaluate(model, dataset, config.train, workdir,
                                        augment=augment, start_time=start_time, fine_tuning=fine_tuning)
    results = {**outcome.results, "flags": record}
    if jax.process_index() == 0:
        write_report(workdir, outcome, results, dataset, model_name, model_kwargs)
    return results


def write_report(workdir: str, outcome, results: dict, dataset, model_name: str, model_kwargs: dict) -> None:
    """results.json, then the export, then the figures: what matters most is on disk first."""
    from cnn_jax import export
    from cnn_jax.files import write_json

    import jax

    info = dataset.info
    write_json(os.path.join(workdir, "results.json"), results)
    export.save_export(workdir, model_name, model_kwargs, jax.device_get(outcome.state.eval_variables),
                       class_names=info.class_names, image_shape=info.image_shape)
    write_figures(os.path.join(workdir, "figures"), outcome, dataset)


def write_figures(directory: str, outcome, dataset) -> None:
    """Training curves, confusion matrix, per-class accuracy and a grid of test predictions; a figure
    that cannot be drawn is logged and skipped, since the run's results are already saved."""
    from cnn_jax import evaluation, plots

    names, test = dataset.info.class_names, outcome.test
    confusion = evaluation.confusion_matrix(test["labels"], test["predictions"], dataset.info.num_classes)

    def grid(path):
        images, labels, predictions = evaluation.grid_examples(
            dataset.eval_batches("test"), test["labels"], test["predictions"], GRID_IMAGES)
        plots.plot_prediction_grid(images, labels, predictions, names, path, max_images=GRID_IMAGES)

    figures = {
        "training_curves.png": lambda path: plots.plot_training_curves(outcome.history, path),
        "confusion_matrix.png": lambda path: plots.plot_confusion_matrix(confusion, names, path),
        "per_class_accuracy.png": lambda path: plots.plot_per_class_accuracy(
            evaluation.per_class_accuracy(confusion), names, path),
        "predictions.png": grid,
    }
    for name, draw in figures.items():
        if name == "training_curves.png" and not outcome.history:
            continue
        try:
            draw(os.path.join(directory, name))
        except Exception as error:  # noqa: BLE001 - a figure must never cost the run its results.
            log.warning("figure %s skipped: %s: %s", name, type(error).__name__, error)
