"""The one epoch loop behind every experiment: `train_and_evaluate`.

A run lives in its workdir. Started again with the same workdir, it resumes from the latest
checkpoint (mid-epoch included, since the data order is a function of seed and epoch) and ends
where an uninterrupted run would have.
"""
from __future__ import annotations

import collections
import functools
import logging
import os
import time
from typing import Callable, Iterator, Optional

import flax.linen as nn
import jax
import numpy as np

from cnn_jax import evaluation
from cnn_jax.data import prefetch_to_device
from cnn_jax.train import sharding as sharding_lib
from cnn_jax.train.checkpoint import Checkpointer
from cnn_jax.train.config import TrainConfig
from cnn_jax.train.finetune import FineTuning
from cnn_jax.train.metrics import MetricWriter, ProgressBar, write_json
from cnn_jax.train.optim import make_optimizer, make_schedule
from cnn_jax.train.state import TrainState, create_train_state
from cnn_jax.train.steps import Augment, eval_step, make_train_step

log = logging.getLogger(__name__)

PREFETCH_BATCHES = 2
# Steps the host may dispatch ahead of the devices. Enough to hide dispatch; bounded because with several CPU
# devices a long queue of steps with collectives deadlocks XLA:CPU's rendezvous (8 simulated devices, 100 steps).
MAX_STEPS_IN_FLIGHT = 4
GRID_IMAGES = 24  # Test images in the prediction grid, up to half of them mistakes.


class TrainingDiverged(FloatingPointError):
    """The loss or the gradients became NaN or Inf."""


def train_and_evaluate(model: nn.Module, dataset, config: TrainConfig, workdir: str,
                       augment: Optional[Augment] = None, flags: Optional[dict] = None,
                       start_time: Optional[float] = None, *,
                       fine_tuning: Optional[FineTuning] = None,
                       class_weights: Optional[np.ndarray] = None,
                       export: Optional[Callable[[dict], None]] = None) -> dict:
    """Trains `model` on `dataset`, evaluating every `config.eval_every_epochs`, and returns the results.

    Args:
      model: a Linen module called as `model.apply(variables, images, train=..., ...)`.
      dataset: a `cnn_jax.data.Dataset` (or anything with its `info`, `steps_per_epoch`,
        `train_batches(epoch, start_step)` and `eval_batches(split)`).
      config: the optimizer, schedule and bookkeeping settings.
      workdir: where checkpoints, metrics, figures and results go; an existing run there resumes.
      augment: `(key, images) -> images`, applied on the device inside the train step.
      flags: the settings of the command, stored in `flags.json` and `results.json`.
      start_time: `time.time()` when the command started, so `wall_time_s` covers data loading
        and imports too; default: when this function is called.
      fine_tuning: start from given (pretrained) variables and freeze or slow down parts of the
        network (`cnn_jax.train.finetune`); default: a fresh network, trained as a whole.
      class_weights: one loss weight per class (`steps.balanced_class_weights` for imbalanced
        data); default: every example counts the same.
      export: called on process 0 with the final variables once results are written, e.g. to
        save what inference needs (`cnn_jax.export.save_export`).

    Returns:
      The contents of `results.json`: `test_accuracy`, `test_loss`, `per_class_accuracy` (by
      class name), `wall_time_s` (of this call, or since `start_time`), `train_images_per_sec`
      (the median over the logged intervals of the whole run, so compilation and evaluation
      stay out of it), `steps`, `flags`, and with a validation split
      `best_validation_accuracy` and `best_step`.

    Raises:
      TrainingDiverged: at the first log or checkpoint after a step whose loss or gradients are
        not finite; the checkpoints on disk are all from before it.
    """
    start_time = time.time() if start_time is None else start_time
    info = dataset.info
    steps_per_epoch = dataset.steps_per_epoch
    total_steps = config.epochs * steps_per_epoch
    chief = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    if chief:
        write_json(os.path.join(workdir, "flags.json"), flags or {})

    mesh = sharding_lib.make_mesh()
    on_batch, on_all = sharding_lib.batch_sharding(mesh), sharding_lib.replicated(mesh)
    if fine_tuning is None:
        state = create_train_state(model, make_optimizer(config, steps_per_epoch),
                                   info.image_shape, config.seed, on_all)
    else:
        state = fine_tuning.train_state(model, config, steps_per_epoch, info.image_shape, on_all)
    checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
    best = Checkpointer(os.path.join(workdir, "best"), 1) if info.num_validation else None
    restored = checkpoints.restore(state)
    if restored is not None:
        state = restored
        log.info("resuming from step %d (epoch %d) of %s", int(state.step),
                 int(state.step) // steps_per_epoch, checkpoints.directory)
    writer = MetricWriter(workdir, resume_step=int(state.step), tensorboard=config.tensorboard,
                          write=chief)
    train_step = jax.jit(make_train_step(augment, config.label_smoothing, class_weights),
                         in_shardings=(on_all, on_batch), out_shardings=(on_all, on_all),
                         donate_argnums=0)
    evaluate = _make_evaluator(dataset, mesh, on_batch, on_all, config)
    logger = _TrainLogger(writer, ProgressBar(total_steps, config.progress_bar and chief),
                          make_schedule(config, steps_per_epoch), steps_per_epoch)
    test = None
    try:
        step = int(state.step)
        while step < total_steps:
            epoch = step // steps_per_epoch
            batches = _checked(dataset.train_batches(epoch, step % steps_per_epoch), mesh,
                               "batch size")
            logger.resume_clock()
            in_flight = collections.deque()
            for batch in prefetch_to_device(batches, PREFETCH_BATCHES, on_batch):
                state, metrics = train_step(state, batch)
                step += 1
                in_flight.append(metrics["loss"])
                if len(in_flight) > MAX_STEPS_IN_FLIGHT:
                    in_flight.popleft().block_until_ready()
                logger.add(step, metrics, batch["image"].shape[0])
                if step % config.log_every_steps == 0:
                    logger.flush(step)
                if (config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
                        and step % steps_per_epoch):
                    logger.flush(step)
                    checkpoints.save(state)
            if step != (epoch + 1) * steps_per_epoch:
                raise RuntimeError(f"epoch {epoch} yielded {step - epoch * steps_per_epoch} "
                                   f"batches, but the dataset promises {steps_per_epoch}.")
            logger.flush(step)
            if (epoch + 1) % config.eval_every_epochs and step < total_steps:
                checkpoints.save(state)
                continue
            logger.pause_clock()
            best_before = _best_eval(writer.history)
            record, test = _evaluate_epoch(evaluate, state, info.num_validation > 0, step, epoch)
            record["elapsed_s"] = time.time() - start_time
            log.info("epoch %d/%d: %s", epoch + 1, config.epochs, ", ".join(
                f"{k} {v:.4f}" for k, v in record.items() if k.endswith(("accuracy", "loss"))))
            writer.write(record)
            checkpoints.save(state)
            if best is not None and (best_before is None
                                     or record["val_accuracy"] > best_before["val_accuracy"]):
                best.save(state)
    except TrainingDiverged as error:
        checkpoints.wait()
        last_good = checkpoints.latest_step()
        raise TrainingDiverged(f"{error} " + (
            f"The last good checkpoint is step {last_good} in {checkpoints.directory}."
            if last_good is not None else "No checkpoint was saved before it.")) from None
    finally:
        logger.close()
        checkpoints.close()
        if best is not None:
            best.close()
        writer.close()

    test = test or evaluate(state, "test")  # A rerun of a finished run evaluates only.
    confusion = evaluation.confusion_matrix(test["labels"], test["predictions"], info.num_classes)
    per_class = evaluation.per_class_accuracy(confusion)
    history = writer.history
    results = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "per_class_accuracy": {name: float(a) for name, a in zip(info.class_names, per_class)},
        "wall_time_s": time.time() - start_time,
        "train_images_per_sec": float(np.median(
            [r["images_per_sec"] for r in history if r["kind"] == "train"] or [0.0])),
        "steps": step,
        "flags": flags or {},
    }
    best_record = _best_eval(history)
    if best_record is not None:
        results.update(best_validation_accuracy=best_record["val_accuracy"],
                       best_step=best_record["step"])
    if chief:
        _write_figures(os.path.join(workdir, "figures"), history, confusion, per_class, test,
                       dataset)
        write_json(os.path.join(workdir, "results.json"), results)
        if export is not None:
            export(jax.device_get(state.variables))
    return results


def _evaluate_epoch(evaluate, state: TrainState, has_validation: bool, step: int,
                    epoch: int) -> tuple[dict, dict]:
    """The "eval" record of an epoch's end, and the full test evaluation."""
    record = {"kind": "eval", "step": step, "epoch": epoch + 1}
    if has_validation:
        val = evaluate(state, "validation")
        record.update(val_accuracy=val["accuracy"], val_loss=val["loss"])
    test = evaluate(state, "test")
    record.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
    return record, test


def _best_eval(history: list) -> Optional[dict]:
    """The first eval record with the highest validation accuracy (None without validation)."""
    evals = [r for r in history if "val_accuracy" in r]
    return max(evals, key=lambda r: r["val_accuracy"]) if evals else None


def _checked(batches: Iterator[dict], mesh, what: str) -> Iterator[dict]:
    """Passes batches through, first checking that each splits evenly over the devices."""
    for batch in batches:
        sharding_lib.check_batch_size(batch["image"].shape[0], mesh, what)
        yield batch


def _make_evaluator(dataset, mesh, on_batch, on_all, config: TrainConfig) -> Callable[[TrainState, str], dict]:
    """`evaluate(state, split)`: accuracy, mean loss, predictions and labels of a whole split.

    The results of every batch stay on the device until the split is done, then come back in
    one transfer. Labels and masks are taken from the host batches, which every process holds
    in full.
    """
    step = jax.jit(functools.partial(eval_step, test_time_flip=config.test_time_flip,
                                     test_time_shift=config.test_time_shift),
                   in_shardings=(on_all, on_batch), out_shardings=on_all)

    def evaluate(state: TrainState, split: str) -> dict:
        host = []

        def batches():
            for batch in _checked(dataset.eval_batches(split), mesh, "eval batch size"):
                host.append((batch["label"], batch["mask"]))
                yield batch

        sums = jax.device_get([step(state, batch) for batch in
                               prefetch_to_device(batches(), PREFETCH_BATCHES, on_batch)])
        labels, masks = (np.concatenate(column) for column in zip(*host))
        count = sum(float(s["count"]) for s in sums)
        return {
            "accuracy": sum(float(s["correct"]) for s in sums) / count,
            "loss": sum(float(s["loss"]) for s in sums) / count,
            "predictions": np.concatenate([s["predictions"] for s in sums])[masks > 0],
            "labels": labels[masks > 0],
        }

    return evaluate


class _TrainLogger:
    """Holds the device metrics of recent steps and reads them only when asked to flush.

    A flush checks every held step for NaN/Inf (raising TrainingDiverged at the first bad
    one), writes one averaged "train" record, and redraws the progress bar. The clock counts
    training only: it pauses for evaluation, and starts after the first step, whose time is
    mostly compilation.
    """

    def __init__(self, writer: MetricWriter, progress: ProgressBar, schedule,
                 steps_per_epoch: int):
        self._writer, self._progress = writer, progress
        self._schedule, self._steps_per_epoch = schedule, steps_per_epoch
        self._pending: list[tuple[int, dict]] = []
        self._steps, self._seconds = 0, 0.0  # Steps trained while the clock ran, and its time.
        self._interval_images = 0
        self._clock: Optional[float] = None
        self._compiled = False

    def resume_clock(self) -> None:
        self._clock = time.perf_counter()

    def pause_clock(self) -> None:
        self._tick()
        self._clock = None

    def _tick(self) -> float:
        """Adds the time since the last tick to the training time and returns it."""
        now = time.perf_counter()
        elapsed = now - self._clock if self._clock is not None else 0.0
        self._clock = now
        self._seconds += elapsed
        return elapsed

    def add(self, step: int, metrics: dict, images: int) -> None:
        self._pending.append((step, metrics))
        if not self._compiled:
            jax.block_until_ready(metrics)  # One wait, so the clock starts after compilation.
            self._compiled = True
            self._clock = time.perf_counter()
            return
        self._steps += 1
        self._interval_images += images

    def flush(self, step: int) -> None:
        if not self._pending:
            return
        steps, values = zip(*self._pending)
        values = jax.device_get(values)
        elapsed = self._tick()
        self._pending = []
        for s, v in zip(steps, values):
            if not v["finite"]:
                raise TrainingDiverged(
                    f"The training loss or gradients became NaN/Inf at step {s} (epoch "
                    f"{(s - 1) // self._steps_per_epoch + 1}, loss {float(v['loss'])}). Likely "
                    "causes: a learning rate too high for this model and batch size (try 3-10x "
                    "lower, or warmup), no normalization in a deep model, or inputs outside "
                    "[0, 1].")
        images_per_sec = self._interval_images / elapsed if elapsed > 0 else 0.0
        self._interval_images = 0
        record = {
            "kind": "train", "step": step, "epoch": step / self._steps_per_epoch,
            "train_loss": float(np.mean([v["loss"] for v in values])),
            "train_accuracy": float(np.mean([v["accuracy"] for v in values])),
            "grad_norm": float(np.mean([v["grad_norm"] for v in values])),
            "learning_rate": float(self._schedule(step - 1)),
            "images_per_sec": images_per_sec,
        }
        self._writer.write(record)
        steps_per_sec = self._steps / self._seconds if self._seconds > 0 else 0.0
        self._progress.update(step, (step - 1) // self._steps_per_epoch + 1, record["train_loss"],
                              images_per_sec, steps_per_sec)

    def close(self) -> None:
        self._progress.close()


def _write_figures(directory: str, history: list, confusion: np.ndarray, per_class: np.ndarray,
                   test: dict, dataset) -> None:
    """Training curves, confusion matrix, per-class accuracy and a grid of test predictions."""
    from cnn_jax import plots  # matplotlib is needed only here.

    names = dataset.info.class_names
    if history:
        plots.plot_training_curves(history, os.path.join(directory, "training_curves.png"))
    plots.plot_confusion_matrix(confusion, names, os.path.join(directory, "confusion_matrix.png"))
    plots.plot_per_class_accuracy(per_class, names,
                                  os.path.join(directory, "per_class_accuracy.png"))
    images, labels, predictions = _grid_examples(dataset, test["labels"], test["predictions"])
    plots.plot_prediction_grid(images, labels, predictions, names,
                               os.path.join(directory, "predictions.png"), max_images=GRID_IMAGES)


def _grid_examples(dataset, labels: np.ndarray, predictions: np.ndarray):
    """The first test mistakes (up to half the grid), then the first correct predictions.

    Images are read again from the host-side test batches, only as far as the last one chosen.
    """
    wrong = np.flatnonzero(predictions != labels)[:GRID_IMAGES // 2]
    right = np.flatnonzero(predictions == labels)[:GRID_IMAGES - len(wrong)]
    chosen = np.concatenate([wrong, right])
    images, seen = [], 0
    for batch in dataset.eval_batches("test"):
        images.append(batch["image"][batch["mask"] > 0])
        seen += len(images[-1])
        if seen > chosen.max():
            break
    return np.concatenate(images)[chosen], labels[chosen], predictions[chosen]
