"""Tests of the training engine (cnn_jax.train) on a tiny CNN and generated images."""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import os
import signal
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import ROOT

from cnn_jax import data
from cnn_jax.train import (
    Checkpointer,
    CheckpointMismatchError,
    TrainConfig,
    TrainingDiverged,
    create_train_state,
    cross_entropy,
    eval_step,
    make_optimizer,
    make_schedule,
    make_train_step,
    train_and_evaluate,
)
from cnn_jax.train.loop import PREFETCH_BATCHES, Preempted
from cnn_jax.train.metrics import ProgressBar

NUM_CLASSES = 4
# Engine settings the loop tests share: quiet, no TensorFlow import, checkpoints mid-epoch.
QUIET = dict(progress_bar=False, tensorboard=False, log_every_steps=4)


class TinyCNN(nn.Module):
    """Conv -> BatchNorm -> ReLU -> dropout -> Dense: every kind of variable and randomness."""
    features: int = 8

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.features, (3, 3))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        x = nn.Dropout(0.1, deterministic=not train)(x.reshape(x.shape[0], -1))
        return nn.Dense(NUM_CLASSES)(x)


def tiny_dataset(num_train=160, num_test=40, batch_size=16, validation_fraction=0.0):
    """8x8 gray images whose class sets which quadrant is bright: learnable in a few steps."""
    rng = np.random.default_rng(0)

    def split(n):
        labels = rng.integers(0, NUM_CLASSES, n)
        images = rng.integers(0, 60, (n, 8, 8, 1))
        for i, label in enumerate(labels):
            row, col = divmod(int(label), 2)
            images[i, 4 * row:4 * row + 4, 4 * col:4 * col + 4] += 150
        return images.astype(np.uint8), labels

    config = data.DataConfig("tiny", batch_size=batch_size, eval_batch_size=16,
                             validation_fraction=validation_fraction)
    return data.from_arrays(config, ["a", "b", "c", "d"], split(num_train), split(num_test))


class FaultyDataset:
    """A dataset whose training batches go wrong at one global step (1-based)."""

    def __init__(self, dataset, at_step: int, fault: str):
        self._dataset, self._at_step, self._fault = dataset, at_step, fault
        self.info, self.steps_per_epoch = dataset.info, dataset.steps_per_epoch

    def train_batches(self, epoch, start_step=0):
        for i, batch in enumerate(self._dataset.train_batches(epoch, start_step)):
            if epoch * self.steps_per_epoch + start_step + i + 1 == self._at_step:
                if self._fault == "interrupt":
                    raise KeyboardInterrupt("simulated interruption")
                if self._fault == "sigterm":  # as a cloud VM's preemption notice arrives
                    os.kill(os.getpid(), signal.SIGTERM)
                    yield batch
                    continue
                batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
            yield batch

    def eval_batches(self, split):
        return self._dataset.eval_batches(split)


def final_params(workdir: str, config: TrainConfig, dataset) -> dict:
    """The parameters of the latest checkpoint in `workdir`, flattened by path."""
    target = create_train_state(TinyCNN(), make_optimizer(config, dataset.steps_per_epoch),
                                dataset.info.image_shape, seed=123)
    state = Checkpointer(os.path.join(workdir, "checkpoints"), 1).restore(target)
    return flatten(state.params)


def flatten(tree) -> dict:
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def eval_records(workdir: str) -> list:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records
            if r["kind"] == "eval"]


# --- config, optimizer, loss -------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("learning_rate", -0.1), ("learning_rate", float("nan")), ("epochs", 0),
    ("optimizer", "rmsprop"), ("schedule", "step"), ("momentum", 1.0),
    ("label_smoothing", 1.0), ("weight_decay", -1e-4), ("keep_checkpoints", 0),
    ("log_every_steps", 0), ("warmup_epochs", 10), ("test_time_shift", -1), ("eval_every_epochs", 0)])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field}=.*invalid: .+"):
        TrainConfig(**{"epochs": 10, field: value})


def test_warmup_schedules_need_warmup():
    with pytest.raises(ValueError, match="warmup_epochs.*schedule=onecycle"):
        TrainConfig(schedule="onecycle", warmup_epochs=0)


def test_schedules_rise_and_fall_where_configured():
    peak, steps_per_epoch = 0.4, 10
    for name in ("warmup_cosine", "onecycle"):
        lr = make_schedule(TrainConfig(epochs=5, learning_rate=peak, schedule=name,
                                       warmup_epochs=1), steps_per_epoch)
        assert float(lr(0)) < 0.1 * peak
        assert float(lr(10)) == pytest.approx(peak, rel=1e-3)
        assert float(lr(49)) < 0.01 * peak
        assert float(lr(5)) < float(lr(10)) > float(lr(30))
    cosine = make_schedule(TrainConfig(epochs=5, learning_rate=peak), steps_per_epoch)
    assert float(cosine(0)) == pytest.approx(peak) and float(cosine(50)) == pytest.approx(0)
    constant = make_schedule(TrainConfig(epochs=5, learning_rate=peak, schedule="constant"),
                             steps_per_epoch)
    assert float(constant(37)) == pytest.approx(peak)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_weight_decay_shrinks_kernels_only(optimizer):
    params = {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
              "BatchNorm_0": {"scale": jnp.ones(2), "bias": jnp.ones(2)}}
    tx = make_optimizer(TrainConfig(optimizer=optimizer, learning_rate=0.1, momentum=0,
                                    weight_decay=0.5, schedule="constant"), 10)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["Dense_0"]["kernel"], 0.95, rtol=1e-6)
    for leaf in (new["Dense_0"]["bias"], new["BatchNorm_0"]["scale"], new["BatchNorm_0"]["bias"]):
        np.testing.assert_array_equal(leaf, 1.0)


def test_cross_entropy_with_label_smoothing_matches_the_formula():
    logits = jnp.array([[2.0, 0.5, -1.0, 0.0]])
    smoothing = 0.2
    targets = np.full(4, smoothing / 4)
    targets[1] += 1 - smoothing
    expected = -(targets * jax.nn.log_softmax(logits)[0]).sum()
    np.testing.assert_allclose(cross_entropy(logits, jnp.array([1]), smoothing)[0], expected,
                               rtol=1e-6)


def test_progress_bar_shows_loss_speed_and_time_left():
    stream = io.StringIO()  # Not a terminal: one line per update.
    bar = ProgressBar(total_steps=100, stream=stream, width=10)
    bar.update(step=40, epoch=2, loss=0.123456, images_per_sec=1234.5, steps_per_sec=2.0)
    assert stream.getvalue() == "epoch 2 [####......] 40/100 loss 0.1235 1,234 img/s ETA 0:30\n"


# --- steps ---------------------------------------------------------------------------------------

def _flip(key, images):
    """Random per-example horizontal flips, so that the augmentation key matters."""
    return jnp.where(jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1)),
                     images[:, :, ::-1], images)


@functools.lru_cache()
def _jitted_step(augment):
    return jax.jit(make_train_step(augment), donate_argnums=0)


def _train_steps(seed: int, batch: dict, steps: int, augment=None):
    config = TrainConfig(optimizer="adam", learning_rate=1e-2, schedule="constant")
    state = create_train_state(TinyCNN(), make_optimizer(config, 100), (8, 8, 1), seed)
    step = _jitted_step(augment)
    history = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        history.append(jax.device_get(metrics))
    return state, history


def test_overfits_one_batch():
    batch = next(tiny_dataset().train_batches(0))
    batch["label"] = np.random.default_rng(1).integers(0, NUM_CLASSES, 16).astype(np.int32)
    _, history = _train_steps(0, batch, 150)
    assert history[0]["loss"] > 1.0
    assert history[-1]["loss"] < 0.05 and history[-1]["accuracy"] == 1.0
    assert all(m["finite"] for m in history)


def test_same_seed_same_metrics_and_another_seed_differs():
    batch = next(tiny_dataset().train_batches(0))
    state_a, run_a = _train_steps(0, batch, 3, _flip)
    state_b, run_b = _train_steps(0, batch, 3, _flip)
    _, run_c = _train_steps(1, batch, 3, _flip)
    assert [m["loss"] for m in run_a] == [m["loss"] for m in run_b]
    jax.tree.map(np.testing.assert_array_equal, state_a.params, state_b.params)
    assert run_a[-1]["loss"] != run_c[-1]["loss"]
    assert int(state_a.step) == 3


def test_test_time_flip_averages_each_image_with_its_mirror():
    state = _train_steps(0, next(tiny_dataset().train_batches(0)), 2)[0]
    batch = next(tiny_dataset().eval_batches("test"))
    mirrored = {**batch, "image": batch["image"][:, :, ::-1]}
    plain, flipped = eval_step(state, batch), eval_step(state, mirrored)
    tta, tta_mirrored = eval_step(state, batch, test_time_flip=True), eval_step(state, mirrored, test_time_flip=True)
    assert (plain["predictions"] != flipped["predictions"]).any()  # the net is not mirror-symmetric ...
    np.testing.assert_array_equal(tta["predictions"], tta_mirrored["predictions"])  # ... its flip average is
    np.testing.assert_allclose(tta["loss"], tta_mirrored["loss"], rtol=1e-5)


class _ViewRecorder:
    """A stand-in train state whose model records each batch of images it sees and answers with
    logits [z, 0], z a different number for each call."""

    def __init__(self):
        self.variables, self.eval_variables, self.views = {}, {}, []

    def apply_fn(self, variables, images, train):
        assert not train
        self.views.append(np.asarray(images))
        return jnp.stack([jnp.full(images.shape[0], float(len(self.views))), jnp.zeros(images.shape[0])], -1)


@pytest.mark.parametrize("flip", [False, True])
def test_test_time_shift_adds_the_two_diagonal_translations_at_half_weight(flip):
    image = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    recorder = _ViewRecorder()
    result = eval_step(recorder, {"image": jnp.asarray(image), "label": jnp.zeros(1, jnp.int32),
                                  "mask": jnp.ones(1)}, test_time_flip=flip, test_time_shift=1)
    # Translated by one pixel with reflected borders: row/column -1 reads 1, row/column 4 reads 2.
    up_left, down_right = ([1, 0, 1, 2], [1, 2, 3, 2])
    expected = [image[:, rows][:, :, rows] for rows in ([0, 1, 2, 3], up_left, down_right)]
    if flip:  # each view, then its mirror
        expected = [view for v in expected for view in (v, v[:, :, ::-1])]
    assert len(recorder.views) == len(expected)
    for seen, want in zip(recorder.views, expected):
        np.testing.assert_array_equal(seen, want)
    z = np.arange(1.0, len(expected) + 1)  # each call's logit for class 0
    z = z.reshape(3, -1).mean(1) if flip else z  # flip-averaged per view
    combined = z[0] / 2 + (z[1] + z[2]) / 4
    np.testing.assert_allclose(result["loss"], np.log1p(np.exp(-combined)), rtol=1e-6)


# --- checkpoints ---------------------------------------------------------------------------------

def _trained_state(seed=0, steps=2):
    state, _ = _train_steps(seed, next(tiny_dataset().train_batches(0)), steps)
    return state


def test_checkpoint_round_trip_restores_identical_state(tmp_path):
    state = _trained_state()
    checkpoints = Checkpointer(str(tmp_path), max_to_keep=2)
    checkpoints.save(state)
    checkpoints.close()
    fresh = _trained_state(seed=5, steps=1)
    restored = Checkpointer(str(tmp_path), max_to_keep=2).restore(fresh)
    saved_leaves, restored_leaves = flatten(state), flatten(restored)
    assert saved_leaves.keys() == restored_leaves.keys()
    for name in saved_leaves:
        np.testing.assert_array_equal(restored_leaves[name], saved_leaves[name], err_msg=name)
    assert int(restored.step) == 2 and restored.batch_stats


def test_a_finished_checkpoint_is_fsynced_file_by_file_with_its_directories(tmp_path, monkeypatch):
    import os

    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    checkpoints = Checkpointer(str(tmp_path), max_to_keep=2)
    checkpoints.save(_trained_state())
    checkpoints.wait()
    step = os.path.join(os.path.realpath(tmp_path), "2")
    written = {os.path.join(d, n) for d, _, names in os.walk(step) for n in names}
    directories = {d for d, _, _ in os.walk(step)}
    assert written and written | directories <= set(synced)
    assert os.path.realpath(tmp_path) in synced  # the entry that names the step
    checkpoints.close()


def test_restoring_into_another_model_names_the_mismatch(tmp_path):
    checkpoints = Checkpointer(str(tmp_path), max_to_keep=1)
    checkpoints.save(_trained_state())
    checkpoints.close()
    config = TrainConfig(optimizer="adam", learning_rate=1e-2, schedule="constant")
    wider = create_train_state(TinyCNN(features=16), make_optimizer(config, 100), (8, 8, 1), 0)
    with pytest.raises(CheckpointMismatchError,
                       match=r"params/Conv_0/kernel: the checkpoint has shape \(3, 3, 1, 8\).*"
                             r"\(3, 3, 1, 16\)(.|\n)*new workdir"):
        Checkpointer(str(tmp_path), max_to_keep=1).restore(wider)


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    checkpoints = Checkpointer(str(tmp_path), max_to_keep=3)
    first = _trained_state(steps=1)
    checkpoints.save(first)
    checkpoints.save(_trained_state(steps=2))
    checkpoints.close()
    for folder, _, files in os.walk(tmp_path / "2"):
        for name in files:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(b"\x00garbage")
    checkpoints = Checkpointer(str(tmp_path), max_to_keep=3)
    with caplog.at_level(logging.WARNING, logger="cnn_jax.train.checkpoint"):
        restored = checkpoints.restore(_trained_state(seed=7))
    assert int(restored.step) == 1
    np.testing.assert_array_equal(flatten(restored.params)["['Dense_0']['kernel']"],
                                  flatten(first.params)["['Dense_0']['kernel']"])
    assert "checkpoint" in caplog.text and "unreadable" in caplog.text
    assert (tmp_path / "unreadable-2").is_dir()
    checkpoints.save(_trained_state(steps=2))  # The resumed run can save its step 2 again.
    checkpoints.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2", "unreadable-2"]


# --- the loop ------------------------------------------------------------------------------

def test_interrupted_run_resumes_to_the_same_end(tmp_path, caplog):
    dataset = tiny_dataset(validation_fraction=0.2)  # 128 train examples: 8 steps per epoch.
    config = TrainConfig(epochs=2, learning_rate=0.05, checkpoint_every_steps=3, **QUIET)
    whole = train_and_evaluate(TinyCNN(), dataset, config, str(tmp_path / "whole"))

    resumed_dir = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(TinyCNN(), FaultyDataset(dataset, 12, "interrupt"), config,
                           resumed_dir)
    with caplog.at_level(logging.INFO, logger="cnn_jax.train.loop"):
        resumed = train_and_evaluate(TinyCNN(), dataset, config, resumed_dir)
    assert "resuming from step 9" in caplog.text  # Mid-epoch: 8 steps per epoch.

    a, b = final_params(str(tmp_path / "whole"), config, dataset), final_params(resumed_dir,
                                                                                config, dataset)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert eval_records(str(tmp_path / "whole")) == eval_records(resumed_dir)
    assert resumed.results["test_accuracy"] == whole.results["test_accuracy"] > 0.5
    with open(os.path.join(resumed_dir, "metrics.jsonl")) as f:
        steps = [(r["kind"], r["step"]) for r in map(json.loads, f)]
    assert len(steps) == len(set(steps)), "records logged before the interruption repeat"
    assert os.listdir(os.path.join(resumed_dir, "best"))  # Validation split -> best/ kept.


def test_several_steps_per_call_train_as_one_and_resume_bit_for_bit(tmp_path):
    """steps_per_execution=4 on 10 steps per epoch with checkpoints every 3 steps: calls of 3, 1, 2, 2, 1, 1
    steps in the first epoch (split where checkpoints and the epoch end fall). Against one step per call the
    result differs by float rounding only (XLA fuses the loop's body its own way: a few ulps after 20 steps);
    interrupted at step 12 and resumed, it ends bit for bit where the uninterrupted run does."""
    dataset = tiny_dataset()
    config = TrainConfig(epochs=2, learning_rate=0.05, checkpoint_every_steps=3, keep_checkpoints=10, **QUIET)
    stacked = dataclasses.replace(config, steps_per_execution=4)
    train_and_evaluate(TinyCNN(), dataset, config, str(tmp_path / "one"))
    train_and_evaluate(TinyCNN(), dataset, stacked, str(tmp_path / "four"))
    resumed = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(TinyCNN(), FaultyDataset(dataset, 12, "interrupt"), stacked, resumed)
    train_and_evaluate(TinyCNN(), dataset, stacked, resumed)
    one, four, again = (final_params(str(tmp_path / workdir), config, dataset)
                        for workdir in ("one", "four", "resumed"))
    for name in one:
        np.testing.assert_allclose(four[name], one[name], rtol=1e-5, atol=1e-7, err_msg=name)
        np.testing.assert_array_equal(again[name], four[name], err_msg=name)
    assert eval_records(resumed) == eval_records(str(tmp_path / "four"))
    for a, b in zip(eval_records(str(tmp_path / "four")), eval_records(str(tmp_path / "one")), strict=True):
        assert a.pop("kind") == b.pop("kind") == "eval" and a == pytest.approx(b, rel=1e-5)
    assert (sorted(map(int, os.listdir(tmp_path / "four" / "checkpoints")))
            == sorted(map(int, os.listdir(tmp_path / "one" / "checkpoints"))) == [3, 6, 9, 10, 12, 15, 18, 20])


def test_run_returns_state_history_and_results_and_writes_only_checkpoints_and_metrics(tmp_path):
    dataset = tiny_dataset()
    config = TrainConfig(epochs=1, learning_rate=0.05, log_every_steps=5, progress_bar=False)
    outcome = train_and_evaluate(TinyCNN(), dataset, config, str(tmp_path))
    results = outcome.results
    assert set(results["per_class_accuracy"]) == {"a", "b", "c", "d"}
    assert results["train_images_per_sec"] > 0
    assert results["steps"] == dataset.steps_per_epoch == int(outcome.state.step) and "best_step" not in results
    assert [r["kind"] for r in outcome.history] == ["train", "train", "eval"]
    assert outcome.test["accuracy"] == results["test_accuracy"] == outcome.history[-1]["test_accuracy"]
    assert len(outcome.test["predictions"]) == len(outcome.test["labels"]) == dataset.info.num_test
    assert sorted(os.listdir(tmp_path)) == ["checkpoints", "metrics.jsonl", "tensorboard"]  # the caller reports
    with open(tmp_path / "metrics.jsonl") as f:
        assert [json.loads(line) for line in f] == json.loads(json.dumps(outcome.history))


def test_sigterm_saves_a_checkpoint_at_the_next_step_and_the_rerun_ends_as_an_uninterrupted_one(tmp_path):
    dataset = tiny_dataset()  # 10 steps per epoch
    config = TrainConfig(epochs=2, learning_rate=0.05, **QUIET)
    whole = train_and_evaluate(TinyCNN(), dataset, config, str(tmp_path / "whole"))
    stopped = str(tmp_path / "stopped")
    # The signal comes while batch 13 is read, PREFETCH_BATCHES ahead of the step that runs.
    at = 13 - PREFETCH_BATCHES
    with pytest.raises(Preempted, match=f"stopped at step {at} by a signal, with a checkpoint saved"):
        train_and_evaluate(TinyCNN(), FaultyDataset(dataset, 13, "sigterm"), config, stopped)
    assert sorted(map(int, os.listdir(os.path.join(stopped, "checkpoints")))) == [10, at]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the engine's handler is gone
    resumed = train_and_evaluate(TinyCNN(), dataset, config, stopped)
    a, b = final_params(str(tmp_path / "whole"), config, dataset), final_params(stopped, config, dataset)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert resumed.results["test_accuracy"] == whole.results["test_accuracy"]


def test_eval_every_epochs_evaluates_less_often_but_always_at_the_end(tmp_path):
    dataset = tiny_dataset(validation_fraction=0.2)  # 8 steps per epoch
    config = TrainConfig(epochs=5, learning_rate=0.05, eval_every_epochs=2, keep_checkpoints=5, **QUIET)
    results = train_and_evaluate(TinyCNN(), dataset, config, str(tmp_path)).results
    evals = eval_records(str(tmp_path))
    assert [r["epoch"] for r in evals] == [2, 4, 5]
    assert results["test_accuracy"] == evals[-1]["test_accuracy"]
    assert results["best_step"] in [r["step"] for r in evals]
    assert sorted(map(int, os.listdir(tmp_path / "checkpoints"))) == [8, 16, 24, 32, 40]


@pytest.mark.parametrize("steps_per_execution", [1, 4])
def test_divergence_stops_at_the_first_bad_step_keeping_good_checkpoints(tmp_path, steps_per_execution):
    dataset = FaultyDataset(tiny_dataset(), 7, "nan")  # With 4 steps per call, step 7 is inside a call.
    config = TrainConfig(epochs=2, learning_rate=0.05, checkpoint_every_steps=3, keep_checkpoints=5,
                         steps_per_execution=steps_per_execution, **{**QUIET, "log_every_steps": 100})
    with pytest.raises(TrainingDiverged,
                       match=r"NaN/Inf at step 7 (.|\n)*learning rate(.|\n)*checkpoint is step 6"):
        train_and_evaluate(TinyCNN(), dataset, config, str(tmp_path))
    assert sorted(map(int, os.listdir(tmp_path / "checkpoints"))) == [3, 6]
    params = final_params(str(tmp_path), config, dataset)
    assert all(np.isfinite(leaf).all() for leaf in params.values())


def test_eight_devices_agree_with_one(tmp_path):
    one = _run_for_device_test(str(tmp_path / "one"))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",  # tests/ holds helpers.py
           "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests"), os.environ.get("PYTHONPATH", "")])}
    out = str(tmp_path / "eight.npz")
    proc = subprocess.run([sys.executable, __file__, str(tmp_path / "eight"), out], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "devices 8" in proc.stdout
    assert "batch size 12 is not divisible by the 8 devices: use a multiple of 8, such as 16" \
        in proc.stdout
    eight = np.load(out)
    for steps_per_execution in (1, 4):  # Stacks of batches split over the devices along their second axis.
        for name in one:
            np.testing.assert_allclose(eight[f"{steps_per_execution}{name}"], one[name], rtol=2e-4, atol=2e-5,
                                       err_msg=f"{steps_per_execution} steps per call: {name}")


def _run_for_device_test(workdir: str, steps_per_execution: int = 1) -> dict:
    dataset = tiny_dataset()
    config = TrainConfig(epochs=1, learning_rate=0.05, steps_per_execution=steps_per_execution, **QUIET)
    train_and_evaluate(TinyCNN(), dataset, config, workdir)
    return final_params(workdir, config, dataset)


if __name__ == "__main__":  # The 8-device half of test_eight_devices_agree_with_one.
    print("devices", jax.device_count())
    np.savez(sys.argv[2], **{f"{k}{name}": value for k in (1, 4)
                             for name, value in _run_for_device_test(f"{sys.argv[1]}_{k}", k).items()})
    try:
        train_and_evaluate(TinyCNN(), tiny_dataset(batch_size=12), TrainConfig(**QUIET),
                           sys.argv[1] + "_odd")
    except ValueError as error:
        print(error)


def test_orbax_is_imported_only_when_a_checkpointer_is_made():
    """Importing the training engine leaves out orbax (tensorstore, an event loop: 30 MB resident), which only
    checkpointing needs."""
    program = ("import sys; import cnn_jax.train as t; assert 'orbax' not in sys.modules, 'imported early'; "
               "import tempfile; t.Checkpointer(tempfile.mkdtemp(), 1); assert 'orbax' in sys.modules")
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=180,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
