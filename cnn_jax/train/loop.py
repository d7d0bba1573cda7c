"""The one epoch loop behind every experiment: `train_and_evaluate`.

A run lives in its workdir. Started again with the same workdir, it resumes from the latest
checkpoint (mid-epoch included, since the data order is a function of seed and epoch) and ends
where an uninterrupted run would have. The engine writes checkpoints and metrics only; it returns
the trained state, the history and the test evaluation, and its caller reports them (results,
export, figures).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import signal
import threading
import time
from typing import Callable, Iterator, Optional

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils

from cnn_jax import evaluation, workdir_files
from cnn_jax.data import prefetch_to_device, process_eval_batches, process_train_batches
from cnn_jax.train import sharding as sharding_lib
from cnn_jax.train.checkpoint import Checkpointer
from cnn_jax.train.config import TrainConfig
from cnn_jax.train.finetune import FineTuning
from cnn_jax.train.metrics import MetricWriter, ProgressBar
from cnn_jax.train.optim import make_optimizer, make_schedule
from cnn_jax.train.state import TrainState, create_train_state
from cnn_jax.train.steps import Augment, balanced_class_weights, eval_step, make_train_step

log = logging.getLogger(__name__)

PREFETCH_BATCHES = 2
# Calls of the train step the host may dispatch ahead of the devices. Enough to hide dispatch; bounded because
# with several CPU devices a long queue of steps with collectives deadlocks XLA:CPU's rendezvous (8 simulated
# devices, 100 steps).
MAX_CALLS_IN_FLIGHT = 4


class TrainingDiverged(FloatingPointError):
    """The loss or the gradients became NaN or Inf."""


class Preempted(Exception):
    """SIGTERM or Ctrl-C stopped the run at a step boundary, after saving a checkpoint there."""

    def __init__(self, step: int, directory: str):
        super().__init__(f"stopped at step {step} by a signal, with a checkpoint saved in {directory}: run the "
                         f"same command again to resume")
        self.step = step


@dataclasses.dataclass
class Outcome:
    """What a run produced: the final state, every metrics record, the test evaluation, the summary.

    `test` holds `accuracy`, `loss`, and the `predictions` and `labels` of every test example;
    `results` is what `results.json` reports (see `train_and_evaluate`).
    """
    state: TrainState
    history: list
    test: dict
    results: dict


def train_and_evaluate(model: nn.Module, dataset, config: TrainConfig, workdir: str,
                       augment: Optional[Augment] = None, start_time: Optional[float] = None, *,
                       fine_tuning: Optional[FineTuning] = None) -> Outcome:
    """Trains `model` on `dataset`, evaluating every `config.eval_every_epochs`, and returns the outcome.

    Args:
      model: a Linen module called as `model.apply(variables, images, train=..., ...)`.
      dataset: a `cnn_jax.data.Dataset` (or anything with its `info`, `steps_per_epoch`,
        `train_batches(epoch, start_step)`, `eval_batches(split)` and, for
        `config.class_weights`, `train_class_counts()`).
      config: the optimizer, schedule and bookkeeping settings.
      workdir: where checkpoints and metrics go; an existing run there resumes.
      augment: `(key, images) -> images`, applied on the device inside the train step.
      start_time: `time.time()` when the command started, so `wall_time_s` covers data loading
        and imports too; default: when this function is called.
      fine_tuning: start from given (pretrained) variables and freeze or slow down parts of the
        network (`cnn_jax.train.finetune`); default: a fresh network, trained as a whole.

    Returns:
      An `Outcome` whose `results` hold `test_accuracy`, `test_loss`, `per_class_accuracy` (by
      class name), `wall_time_s` (of this call, or since `start_time`), `train_images_per_sec`
      (the median over the logged intervals of the whole run, so compilation and evaluation
      stay out of it), `steps`, and with a validation split `best_validation_accuracy` and
      `best_step`.

    Raises:
      TrainingDiverged: at the first log or checkpoint after a step whose loss or gradients are
        not finite; the checkpoints on disk are all from before it.
      Preempted: after SIGTERM (or Ctrl-C), once the next step's checkpoint is saved.
    """
    start_time = time.time() if start_time is None else start_time
    os.makedirs(workdir, exist_ok=True)
    mesh = sharding_lib.make_mesh()
    run = _Run(model, dataset, config, workdir, mesh, augment, fine_tuning, start_time)
    try:
        with _stop_signals() as stop_requested:
            state = run.train(stop_requested)
    finally:
        run.close()
    test = run.last_test or run.evaluate(state, "test")  # A rerun of a finished run evaluates only.
    history = run.writer.history
    return Outcome(state, history, test, _summary(test, history, dataset.info, int(state.step), start_time))


def _summary(test: dict, history: list, info, steps: int, start_time: float) -> dict:
    """What results.json reports of a finished run."""
    confusion = evaluation.confusion_matrix(test["labels"], test["predictions"], info.num_classes)
    per_class = evaluation.per_class_accuracy(confusion)
    results = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "per_class_accuracy": {name: float(a) for name, a in zip(info.class_names, per_class)},
        "wall_time_s": time.time() - start_time,
        "train_images_per_sec": float(np.median(
            [r["images_per_sec"] for r in history if r["kind"] == "train"] or [0.0])),
        "steps": steps,
    }
    best_record = _best_eval(history)
    if best_record is not None:
        results.update(best_validation_accuracy=best_record["val_accuracy"], best_step=best_record["step"])
    return results


@contextlib.contextmanager
def _stop_signals():
    """Yields `stop_requested(step) -> bool`: true once SIGTERM or SIGINT arrived (all processes agree).

    One process: the signals set a flag that the loop reads at step boundaries; a second Ctrl-C
    interrupts at once. Several processes: JAX's preemption service (SIGTERM) picks the step at
    which every process stops together.
    """
    if jax.process_count() > 1:
        yield multihost_utils.reached_preemption_sync_point
        return
    if threading.current_thread() is not threading.main_thread():
        yield lambda step: False
        return
    received = []

    def handler(signum, frame):
        received.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # A second Ctrl-C stops at once.
        log.warning("%s received: saving a checkpoint at the next step boundary, then stopping",
                    signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield lambda step: bool(received)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class _Run:
    """The parts of one training run: state, checkpoints, metrics, the jitted steps."""

    def __init__(self, model, dataset, config: TrainConfig, workdir: str, mesh, augment, fine_tuning,
                 start_time: float):
        self.start_time = start_time
        info = dataset.info
        self.dataset, self.config, self.mesh = dataset, config, mesh
        self.steps_per_epoch = dataset.steps_per_epoch
        self.total_steps = config.epochs * self.steps_per_epoch
        self.on_batch, on_all = sharding_lib.batch_sharding(mesh), sharding_lib.replicated(mesh)
        if fine_tuning is None:
            state = create_train_state(model, make_optimizer(config, self.steps_per_epoch),
                                       info.image_shape, config.seed, on_all, ema_decay=config.ema_decay)
        else:
            state = fine_tuning.train_state(model, config, self.steps_per_epoch, info.image_shape, on_all)
        self.checkpoints = Checkpointer(os.path.join(workdir, workdir_files.CHECKPOINTS_DIR), config.keep_checkpoints)
        self.best = Checkpointer(os.path.join(workdir, workdir_files.BEST_DIR), 1) if info.num_validation else None
        restored = self.checkpoints.restore(state)
        if restored is not None:
            state = restored
            log.info("resuming from step %d (epoch %d) of %s", int(state.step),
                     int(state.step) // self.steps_per_epoch, self.checkpoints.directory)
        self.initial_state = state
        chief = jax.process_index() == 0
        self.writer = MetricWriter(workdir, resume_step=int(state.step), tensorboard=config.tensorboard,
                                   write=chief)
        class_weights = (balanced_class_weights(dataset.train_class_counts()) if config.class_weights
                         else None)
        step = make_train_step(augment, config.label_smoothing, class_weights, mixup_alpha=config.mixup_alpha,
                               cutmix_alpha=config.cutmix_alpha, mixup_switch_prob=config.mixup_switch_prob)
        self.stacked = config.steps_per_execution > 1  # Inputs are stacks of batches, one per step.
        if self.stacked:
            step = functools.partial(jax.lax.scan, step)
        self.on_input = sharding_lib.steps_sharding(mesh) if self.stacked else self.on_batch
        self.train_step = jax.jit(step, in_shardings=(on_all, self.on_input), out_shardings=(on_all, on_all),
                                  donate_argnums=0)
        self.evaluate = _make_evaluator(dataset, mesh, self.on_batch, on_all, config)
        self.logger = _TrainLogger(self.writer, ProgressBar(self.total_steps, config.progress_bar and chief),
                                   make_schedule(config, self.steps_per_epoch), self.steps_per_epoch, start_time)
        self.last_test = None

    def train(self, stop_requested: Callable[[int], bool]) -> TrainState:
        """Trains from the restored step to the last; returns the final state."""
        state, config = self.initial_state, self.config
        try:
            step = int(state.step)
            while step < self.total_steps:
                epoch = step // self.steps_per_epoch
                state, step = self._train_epoch(state, step, epoch, stop_requested)
                self.logger.flush(step)
                if (epoch + 1) % config.eval_every_epochs and step < self.total_steps:
                    self._save(state)
                    continue
                self.logger.pause_clock()
                self._evaluate_and_save(state, step, epoch)
        except TrainingDiverged as error:
            self.checkpoints.wait()
            last_good = self.checkpoints.latest_step()
            raise TrainingDiverged(f"{error} " + (
                f"The last good checkpoint is step {last_good} in {self.checkpoints.directory}."
                if last_good is not None else "No checkpoint was saved before it.")) from None
        return state

    def _train_epoch(self, state, step: int, epoch: int, stop_requested):
        """One epoch's steps from `step`; saves and raises Preempted when a stop is requested."""
        config = self.config
        inputs = _checked(process_train_batches(self.dataset, epoch, step % self.steps_per_epoch), self.mesh,
                          "batch size")
        if self.stacked:
            inputs = _stacks(inputs, step, epoch * self.steps_per_epoch, self.steps_per_epoch,
                             config.steps_per_execution, config.checkpoint_every_steps)
        self.logger.resume_clock()
        in_flight = collections.deque()
        for batch in prefetch_to_device(inputs, PREFETCH_BATCHES, self.on_input):
            state, metrics = self.train_step(state, batch)
            steps = batch["label"].shape[0] if self.stacked else 1
            step += steps
            in_flight.append(metrics["loss"])
            if len(in_flight) > MAX_CALLS_IN_FLIGHT:
                in_flight.popleft().block_until_ready()
            self.logger.add(step, metrics, steps, batch["label"].size)
            if step // config.log_every_steps > (step - steps) // config.log_every_steps:
                self.logger.flush(step)
            if stop_requested(step):
                self._save(state)
                self.checkpoints.wait()
                raise Preempted(step, self.checkpoints.directory)
            if (config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
                    and step % self.steps_per_epoch):
                self._save(state)
        if step != (epoch + 1) * self.steps_per_epoch:
            raise RuntimeError(f"epoch {epoch} yielded {step - epoch * self.steps_per_epoch} "
                               f"batches, but the dataset promises {self.steps_per_epoch}.")
        return state, step

    def _save(self, state) -> None:
        """Checks and writes the pending metrics (durably), then checkpoints: the metrics never lag it."""
        self.logger.flush(int(state.step))
        self.writer.sync()
        self.checkpoints.save(state)

    def _evaluate_and_save(self, state, step: int, epoch: int) -> None:
        best_before = _best_eval(self.writer.history)
        record, self.last_test = _evaluate_epoch(self.evaluate, state, self.dataset.info.num_validation > 0,
                                                 step, epoch)
        record["elapsed_s"] = time.time() - self.start_time
        log.info("epoch %d/%d: %s", epoch + 1, self.config.epochs, ", ".join(
            f"{k} {v:.4f}" for k, v in record.items() if k.endswith(("accuracy", "loss"))))
        self.writer.write(record)
        self._save(state)
        if self.best is not None and (best_before is None
                                      or record["val_accuracy"] > best_before["val_accuracy"]):
            self.best.save(state)

    def close(self) -> None:
        self.logger.close()
        self.checkpoints.close()
        if self.best is not None:
            self.best.close()
        self.writer.close()


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


def _stacks(batches: Iterator[dict], step: int, epoch_start: int, steps_per_epoch: int, steps_per_call: int,
            checkpoint_every_steps: int) -> Iterator[dict]:
    """Groups an epoch's batches from global `step` on into stacks (steps x batch x ...), one per compiled call.

    A stack holds `steps_per_call` batches, counted from the epoch's start, and ends early where the epoch does
    or where a checkpoint of `checkpoint_every_steps` falls, so those land on call boundaries. Stacking copies
    each batch once on the host, microseconds against a step's milliseconds: not worth a pipeline that gathers
    whole stacks.
    """
    epoch_end = epoch_start + steps_per_epoch
    while True:
        end = min(epoch_end, epoch_start + ((step - epoch_start) // steps_per_call + 1) * steps_per_call)
        if checkpoint_every_steps:
            end = min(end, (step // checkpoint_every_steps + 1) * checkpoint_every_steps)
        group = list(itertools.islice(batches, end - step))
        if not group:
            return
        yield {key: np.stack([batch[key] for batch in group]) for key in group[0]}
        step += len(group)


def _best_eval(history: list) -> Optional[dict]:
    """The first eval record with the highest validation accuracy (None without validation)."""
    evals = [r for r in history if "val_accuracy" in r]
    return max(evals, key=lambda r: r["val_accuracy"]) if evals else None


def _checked(batches: Iterator[dict], mesh, what: str) -> Iterator[dict]:
    """Passes this process's rows of each global batch through, first checking that the global batch splits
    evenly over the devices."""
    for batch in batches:
        sharding_lib.check_batch_size(batch["image"].shape[0] * jax.process_count(), mesh, what)
        yield batch


def _make_evaluator(dataset, mesh, on_batch, on_all, config: TrainConfig) -> Callable[[TrainState, str], dict]:
    """`evaluate(state, split)`: accuracy, mean loss, predictions and labels of a whole split.

    The results of every batch stay on the device until the split is done, then come back in
    one transfer. Each process reads only its rows of every batch; labels and masks come back
    from the devices with the predictions, gathered from all processes.
    """
    def labelled_step(state: TrainState, batch: dict) -> dict:
        sums = eval_step(state, batch, test_time_flip=config.test_time_flip,
                         test_time_shift=config.test_time_shift)
        return {**sums, "label": batch["label"], "mask": batch["mask"]}

    step = jax.jit(labelled_step, in_shardings=(on_all, on_batch), out_shardings=on_all)

    def evaluate(state: TrainState, split: str) -> dict:
        batches = _checked(process_eval_batches(dataset, split), mesh, "eval batch size")
        sums = jax.device_get([step(state, batch) for batch in
                               prefetch_to_device(batches, PREFETCH_BATCHES, on_batch)])
        labels, masks = (np.concatenate([s[key] for s in sums]) for key in ("label", "mask"))
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
    mostly compilation; its end is logged as the time from `start_time` (the command's start) to the first
    trained step.
    """

    def __init__(self, writer: MetricWriter, progress: ProgressBar, schedule,
                 steps_per_epoch: int, start_time: float):
        self._start_time = start_time
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

    def add(self, step: int, metrics: dict, steps: int, images: int) -> None:
        """Holds the metrics of the `steps` steps up to `step` (one value each, or a row per step), which
        trained on `images` images."""
        self._pending.append((step, metrics))
        if not self._compiled:
            jax.block_until_ready(metrics)  # One wait, so the clock starts after compilation.
            log.info("first train call (%d step%s) done %.1f s after the start, its compilation included", steps,
                     "s" * (steps > 1), time.time() - self._start_time)
            self._compiled = True
            self._clock = time.perf_counter()
            return
        self._steps += steps
        self._interval_images += images

    def flush(self, step: int) -> None:
        if not self._pending:
            return
        held = jax.device_get(self._pending)
        elapsed = self._tick()
        self._pending = []
        steps, values = [], []
        for last, metrics in held:
            rows = {key: np.atleast_1d(value) for key, value in metrics.items()}
            count = len(rows["loss"])
            steps += range(last - count + 1, last + 1)
            values += [{key: value[i] for key, value in rows.items()} for i in range(count)]
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
