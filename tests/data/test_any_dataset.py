"""Any dataset, trained from scratch, normalized by its own statistics: a fourth dataset beside the tfds ones.

The fourth dataset is scikit-learn's handwritten digits (shipped in its wheel) written as an image folder by
scripts/make_digits_folder.py.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from helpers import ROOT, experiment, run

from cnn_jax import data, export, settings
from cnn_jax.run import workdir as workdir_lib
from cnn_jax.workdir_files import NORMALIZATION_FILE, RESULTS_FILE
from experiments import mnist

sys.path.insert(0, os.path.join(ROOT, "scripts"))
from make_digits_folder import write_digits_folder  # noqa: E402


def test_channel_statistics_are_the_per_channel_mean_and_std_of_the_first_training_images():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    images[..., 2] //= 4  # a dim blue channel
    dataset = data.from_arrays(data.DataConfig("arrays", batch_size=8), ["a", "b"], (images, rng.integers(0, 2, 40)),
                               (images[:8], np.zeros(8, int)))
    mean, std = data.channel_statistics(dataset)
    pixels = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-6)  # float32 pixels summed in float64
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-6)
    first = np.concatenate([b["image"] for b in dataset.train_batches(0)])[:16].reshape(-1, 3)
    np.testing.assert_allclose(data.channel_statistics(dataset, max_images=16)[0], first.mean(0), rtol=1e-6)
    blank = data.from_arrays(data.DataConfig("blank", batch_size=8), ["a", "b"],
                             (np.full((16, 4, 4, 1), 7, np.uint8), np.arange(16) % 2), (images[:2, ..., :1], [0, 1]))
    with pytest.raises(ValueError, match="hardly vary.*--normalization=model"):
        data.channel_statistics(blank)


def test_a_from_scratch_run_on_a_fourth_dataset_normalizes_by_its_own_statistics(tmp_path):
    folder = tmp_path / "digits"
    assert write_digits_folder(str(folder), size=16) == 1797
    workdir = tmp_path / "run"
    proc = run(experiment("cifar10", f"--workdir={workdir}", f"--dataset={folder}", "--image_size=16",
                          "--model=simple_cnn", "--epochs=2", "--batch_size=32", "--eval_batch_size=120",
                          "--warmup_epochs=0.5", "--test_time_flip=false", "--augment=", "--log_every_steps=20",
                          "--compilation_cache_dir="))
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads((workdir / NORMALIZATION_FILE).read_text())
    everything = np.stack([np.asarray(__import__("PIL.Image").Image.open(os.path.join(d, f)).convert("RGB"))
                           for d, _, files in os.walk(folder) for f in files]) / 255.0
    assert stats["images"] == 1438  # the 80% train split: fewer than 10,000, so all of them
    np.testing.assert_allclose(stats["mean"], everything.mean((0, 1, 2)), atol=0.01)  # the train 80% of all
    np.testing.assert_allclose(stats["std"], everything.std((0, 1, 2)), atol=0.01)
    _, _, meta = export.load_export(str(workdir))
    assert tuple(meta.model_kwargs["mean"]) == tuple(stats["mean"])  # pinned into the export
    assert abs(stats["mean"][0] - 0.1307) > 0.1  # not MNIST's constants, which simple_cnn carries
    results = json.loads((workdir / RESULTS_FILE).read_text())
    assert results["flags"]["normalization"] == "data" and results["test_accuracy"] > 0.6


def test_a_record_from_before_normalization_existed_reads_as_the_model_constants(tmp_path):
    old = settings.replace(mnist.recipe(), workdir=str(tmp_path), normalization="model")
    record = {k: v for k, v in settings.flatten(old).items() if k != "normalization"}  # an older record
    workdir_lib.write_settings(str(tmp_path), record)
    workdir_lib.check_workdir(old, str(tmp_path))  # --normalization=model reproduces it
    with pytest.raises(workdir_lib.SettingsChanged, match="normalization: 'model' then, 'data' now"):
        workdir_lib.check_workdir(settings.replace(old, normalization="data"), str(tmp_path))
