"""End-to-end runs of the experiment scripts, as a user types them, on a few hundred images.

They read the shared offline TFDS data when it is there ($TFDS_DATA_DIR, or ../shared next to
the checkout) and a small generated TFDS dataset of random images otherwise.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from helpers import ROOT, SHARED_DATA, data_dir_for, experiment, run, write_generated_tfds

from cnn_jax import workdir_files as files

# Small and quick: a few hundred training images, no cache shared with other runs.
SMALL = ["--num_train_examples=256", "--batch_size=32", "--log_every_steps=4",
         "--compilation_cache_dir="]










def check_workdir(workdir, epochs: int, flags: dict) -> dict:
    """The files every run leaves, and that they agree with each other; returns results.json."""
    figures = [f"{files.FIGURES_DIR}/{name}.png"
               for name in ("training_curves", "confusion_matrix", "per_class_accuracy", "predictions")]
    for path in (files.SETTINGS_FILE, files.RESULTS_FILE, files.METRICS_FILE, files.CHECKPOINTS_DIR,
                 files.TENSORBOARD_DIR, files.EXPORT_DIR, *figures):
        assert (workdir / path).exists(), path
    with open(workdir / files.RESULTS_FILE) as f:
        results = json.load(f)
    assert {"test_accuracy", "per_class_accuracy", "wall_time_s", "train_images_per_sec",
            "flags"} <= results.keys()
    assert 0.0 <= results["test_accuracy"] <= 1.0 and len(results["per_class_accuracy"]) == 10
    assert results["wall_time_s"] > 0 and results["train_images_per_sec"] > 0
    assert {k: results["flags"][k] for k in flags} == flags
    with open(workdir / files.METRICS_FILE) as f:
        records = [json.loads(line) for line in f]
    assert [r["epoch"] for r in records if r["kind"] == "eval"] == list(range(1, epochs + 1))
    assert results["test_accuracy"] == records[-1]["test_accuracy"]
    return results


def test_mnist_script_end_to_end(tmp_path):
    workdir = tmp_path / "mnist"
    # 8 steps in two calls of 4: the first call compiles, the second is timed (train_images_per_sec).
    proc = run(experiment("mnist", f"--workdir={workdir}", "--epochs=1", "--steps_per_execution=4",
                          f"--data_dir={data_dir_for('mnist', tmp_path)}", *SMALL))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = check_workdir(workdir, 1, {"model": "simple_cnn", "num_train_examples": 256,
                                         "steps_per_execution": 4})
    assert "test accuracy" in proc.stdout
    if results["flags"]["data_dir"] == SHARED_DATA:  # Real digits: even 8 steps learn something.
        assert results["test_accuracy"] > 0.5


@pytest.mark.slow
def test_cifar10_script_end_to_end_with_validation(tmp_path):
    workdir = tmp_path / "cifar10"
    proc = run(experiment("cifar10", f"--workdir={workdir}", "--epochs=1", "--warmup_epochs=0.5",
                          "--model=mlp",
                          "--validation_fraction=0.1", "--half_precision", "--test_time_shift=1",
                          f"--data_dir={data_dir_for('cifar10', tmp_path)}", *SMALL))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = check_workdir(workdir, 1, {"model": "mlp", "half_precision": True,
                                         "augment": ["crop", "flip"], "test_time_flip": True,
                                         "test_time_shift": 1})
    assert results["best_step"] == 8 and os.listdir(workdir / "best")


@pytest.mark.slow  # long end-to-end run; `python -m pytest -m slow`
def test_killed_run_resumes_with_the_same_command(tmp_path):
    """kill -9 mid-training (as a checkpoint is being written), the same command again killed during the
    export, then once more: it resumes and completes with the evaluations of an uninterrupted run.

    The default suite kills a tiny engine run at a chosen step and compares its final state bit for bit
    (tests/run/test_kill_resume.py); this test kills the real command, with checkpoint and export writes cut
    short. benchmarks/kill_resume.py does the same at random points, five times.
    """
    data_dir = write_generated_tfds(str(tmp_path / "tfds"), "mnist", num_train=320)
    workdir = tmp_path / "killed"
    command = experiment("mnist", f"--workdir={workdir}", f"--data_dir={data_dir}", "--epochs=4",
                         "--batch_size=16", "--checkpoint_every_steps=5", "--log_every_steps=5",
                         f"--compilation_cache_dir={tmp_path / 'xla'}")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) as proc:
        for line in proc.stderr:
            if "epoch 1/4" in line:  # Logged right after the first epoch's evaluation.
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (workdir / files.RESULTS_FILE).exists()

    # Resumed, then killed again as soon as results.json exists: during the export that follows it.
    with subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) as proc:
        for line in proc.stderr:
            if "resuming from step" in line:
                break
        while proc.poll() is None and not (workdir / files.RESULTS_FILE).exists():
            time.sleep(0.01)
        proc.kill()
        proc.wait(timeout=60)
    resumed = run(command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step" in resumed.stderr
    from cnn_jax import export

    export.load_export(str(workdir))  # complete, whatever the kill cut short
    check_workdir(workdir, 4, {"epochs": 4})
    with open(workdir / files.METRICS_FILE) as f:
        records = [json.loads(line) for line in f]
    steps = [(r["kind"], r["step"]) for r in records]
    assert len(steps) == len(set(steps)) and steps[-1] == ("eval", 80)

    # The same command never interrupted ends with the same evaluations, bit for bit on CPU.
    uninterrupted = tmp_path / "uninterrupted"
    straight = run([part.replace(str(workdir), str(uninterrupted)) for part in command])
    assert straight.returncode == 0, straight.stderr[-3000:]
    with open(uninterrupted / files.METRICS_FILE) as f:
        expected = [json.loads(line) for line in f]
    def evaluations(rs):
        return [{k: v for k, v in r.items() if k.startswith("test_")} for r in rs if r["kind"] == "eval"]

    assert evaluations(records) == evaluations(expected)


@pytest.mark.parametrize("flag,message", [
    ("--learning_rate=-1", "TrainConfig.learning_rate=-1.0 is invalid: use a positive"),
    ("--model=resnet_9000", "unknown model 'resnet_9000'; choose one of: "),
    ("--batch_size=12", "--batch_size 12 is not divisible by the 8 devices: use a multiple of 8"),
])
def test_bad_flags_get_one_clear_message_before_reading_data(tmp_path, flag, message):
    proc = run(experiment("mnist", f"--workdir={tmp_path}", "--data_dir=/nonexistent", flag),
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr


# --- the fast recipe's whitened stem ------------------------------------------------------------------------

def test_whitened_stem_whitens_the_first_training_images_and_freezes_the_kernel():
    import jax.numpy as jnp

    from cnn_jax import data, ops
    from cnn_jax.models import get_model
    from experiments import cifar10_fast

    rng = np.random.default_rng(0)  # neighbouring pixels and channels correlate, as in photos
    blocks = np.repeat(np.repeat(rng.uniform(0, 180, (96, 4, 4, 1)), 2, 1), 2, 2)
    pixels = blocks + rng.uniform(0, 75, (96, 8, 8, 3))
    train = (pixels.astype(np.uint8), rng.integers(0, 10, 96))
    dataset = data.from_arrays(data.DataConfig("tiny", batch_size=32), [str(i) for i in range(10)], train, train)
    model = get_model("airbench_half", 10)
    config = dataclasses.replace(cifar10_fast.recipe(), whiten_stem=True)
    tuning = cifar10_fast.airbench_start(config, dataset, {})
    assert tuning.whitened and tuning.norm_bias_scale == 1
    kernel = tuning.variables["params"]["stem"]["kernel"]
    assert kernel.shape == (2, 2, 3, 24)
    images = (np.concatenate([b["image"] for b in dataset.train_batches(0)]) - model.mean) / model.std
    patches = ops.image_patches(jnp.asarray(images, jnp.float32), 2)
    before = np.corrcoef(np.asarray(patches).T)
    assert np.abs(before - np.eye(12)).max() > 0.5
    outputs = ops.conv2d(jnp.asarray(images, jnp.float32), kernel, padding="VALID").reshape(-1, 24)[:, :12]
    moments = np.asarray(outputs.T @ outputs / len(outputs))
    np.testing.assert_allclose(moments, np.diag(np.diag(moments)), atol=1e-3)  # decorrelated,
    assert np.all(np.diag(moments) > 0.9) and np.all(np.diag(moments) <= 1 + 1e-3)  # unit variance (eps aside)


@pytest.mark.slow  # long end-to-end run; `python -m pytest -m slow`
def test_fast_recipe_with_a_whitened_stem_end_to_end(tmp_path):
    from cnn_jax import export

    workdir = tmp_path / "fast"
    proc = run(experiment("cifar10_fast", f"--workdir={workdir}", "--epochs=1", "--warmup_epochs=0.5",
                          "--whiten_stem", f"--data_dir={data_dir_for('cifar10', tmp_path)}", *SMALL))
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_workdir(workdir, 1, {"model": "airbench_half", "whiten_stem": True})
    _, variables, _ = export.load_export(str(workdir))
    stem = variables["params"]["stem"]
    # The kernel is frozen through 8 steps (training would have moved the two halves apart); the bias trains.
    np.testing.assert_array_equal(stem["kernel"][..., 12:], -stem["kernel"][..., :12])
    assert np.abs(stem["bias"]).max() > 0

    wrong = run(experiment("cifar10_fast", f"--workdir={tmp_path / 'cnn3'}", "--model=cnn3", "--whiten_stem",
                           "--data_dir=/nonexistent"))
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
    assert "--whiten_stem and --airbench94 need a model that normalizes its input" in wrong.stderr
