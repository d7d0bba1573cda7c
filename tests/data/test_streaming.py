"""Tests of the streaming input (cnn_jax.data.streaming): the same batches as in memory, per-process shards of the
global batches, the automatic choice of path, uint8 to the device, and an exact resume after kill -9 while
streaming."""
import json
import logging
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import ROOT, SHARDS, write_tfds

from cnn_jax import data
from cnn_jax.data import dataset as dataset_lib


def write_folder(root, sizes=((30, 40), (50, 20), (24, 24)), per_class: int = 9) -> str:
    """Three class folders of JPEGs and PNGs of varied sizes, plus one file that does not decode."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for label in range(3):
        folder = os.path.join(root, f"class{label}")
        os.makedirs(folder)
        for i in range(per_class):
            h, w = sizes[i % len(sizes)]
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, f"{i}.{'png' if i % 2 else 'jpg'}"))
    with open(os.path.join(root, "class1", "broken.jpg"), "wb") as file:
        file.write(b"not an image")
    return str(root)


def _same_batches(a, b):
    a, b = list(a), list(b)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key].dtype == y[key].dtype, key
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _both(**config):
    memory = data.load(data.DataConfig(**config, input="memory"))
    stream = data.load(data.DataConfig(**config, input="stream"))
    assert not memory.streaming and stream.streaming
    assert memory.info == stream.info
    return memory, stream


def _check_identical(memory, stream):
    for epoch, start in ((0, 0), (3, 2)):
        _same_batches(memory.train_shards(epoch, start), stream.train_shards(epoch, start))
        _same_batches(memory.train_batches(epoch, start), stream.train_batches(epoch, start))
    for split in ("validation", "test"):
        _same_batches(memory.eval_shards(split), stream.eval_shards(split))
        _same_batches(memory.eval_batches(split), stream.eval_batches(split))
    np.testing.assert_array_equal(memory.train_class_counts(), stream.train_class_counts())


def test_streamed_tfds_batches_equal_the_in_memory_ones(tmp_path):
    """Records of three TFRecord files, read by position, come in tfds's interleaved order, decoded the same."""
    data_dir = write_tfds(str(tmp_path))
    memory, stream = _both(dataset="mnist", data_dir=data_dir, batch_size=8, eval_batch_size=10,
                           validation_fraction=0.1)
    assert memory.info.num_test == 23 and memory.info.num_train + memory.info.num_validation == sum(SHARDS)
    _check_identical(memory, stream)


def test_streamed_folder_batches_equal_the_in_memory_ones(tmp_path, caplog):
    root = write_folder(tmp_path / "photos")
    with caplog.at_level(logging.INFO, logger="cnn_jax"):
        memory, stream = _both(dataset=root, image_size=(16, 12), batch_size=4, eval_batch_size=3,
                               validation_fraction=0.2)
    assert memory.info.num_skipped == stream.info.num_skipped == 1
    assert "checked that the 28 files" in caplog.text
    _check_identical(memory, stream)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cnn_jax"):  # the scan's outcome is cached ...
        data.load(data.DataConfig(root, image_size=(16, 12), batch_size=4, input="stream"))
    assert "from the cache" in caplog.text
    os.remove(os.path.join(root, "class0", "0.jpg"))  # ... under a key of the folder's files
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cnn_jax"):
        again = data.load(data.DataConfig(root, image_size=(16, 12), batch_size=4, input="stream"))
    assert "checked that the 27 files" in caplog.text
    assert again.info.num_train + again.info.num_test == 26


def test_the_path_is_chosen_by_decoded_size_and_logged(tmp_path, monkeypatch, caplog):
    data_dir = write_tfds(str(tmp_path))
    config = data.DataConfig("mnist", data_dir=data_dir, batch_size=8)
    decoded = (sum(SHARDS) + 23) * 28 * 28
    monkeypatch.setattr(dataset_lib, "MEMORY_LIMIT_BYTES", decoded)
    with caplog.at_level(logging.INFO, logger="cnn_jax"):
        assert not data.load(config).streaming
    assert "reading into memory tfds mnist: 118 examples of 28x28x1" in caplog.text
    monkeypatch.setattr(dataset_lib, "MEMORY_LIMIT_BYTES", decoded - 1)
    with caplog.at_level(logging.INFO, logger="cnn_jax"):
        assert data.load(config).streaming
    assert "streaming from disk tfds mnist" in caplog.text and "> the 0 MiB limit" in caplog.text
    monkeypatch.setenv(data.dataset.INPUT_ENV, "memory")  # forced, for measurements
    assert not data.load(config).streaming
    monkeypatch.setenv(data.dataset.INPUT_ENV, "disk")
    with pytest.raises(ValueError, match="must be one of"):
        data.DataConfig("mnist")


@pytest.mark.parametrize("processes", [2, 4])
def test_each_process_reads_its_rows_of_every_global_batch(tmp_path, monkeypatch, processes):
    """Process p's shard is rows [pB/P, (p+1)B/P) of each global batch, padding included, in uint8."""
    data_dir = write_tfds(str(tmp_path))
    dataset = data.load(data.DataConfig("mnist", data_dir=data_dir, batch_size=8, eval_batch_size=12,
                                        input="stream"))
    shards = {}
    for p in range(processes):
        monkeypatch.setattr(dataset_lib, "_process", lambda p=p: (p, processes))
        shards[p] = (list(dataset.train_shards(1, 3)), list(dataset.eval_shards("test")))
    for which, glob in ((0, dataset.train_batches(1, 3)), (1, dataset.eval_batches("test"))):
        glob = list(glob)
        assert all(len(shards[p][which]) == len(glob) for p in shards)
        for step, batch in enumerate(glob):
            for key in batch:
                parts = [shards[p][which][step][key] for p in range(processes)]
                assert all(len(part) == len(batch[key]) // processes for part in parts)
                joined = np.concatenate(parts)
                if key == "image":
                    assert joined.dtype == np.uint8
                    joined = np.divide(joined, np.float32(255), dtype=np.float32)
                np.testing.assert_array_equal(joined, batch[key], err_msg=f"{key} of batch {step}")
    # 23 test examples in batches of 12: the last has 11 real rows, so the last shard of 4 processes is padding.
    masks = [shards[p][1][-1]["mask"] for p in range(processes)]
    assert sum(m.sum() for m in masks) == 11 and masks[-1][-1] == 0
    monkeypatch.setattr(dataset_lib, "_process", lambda: (0, 3))
    with pytest.raises(ValueError, match="global batch size 8 is not divisible by the 3 processes"):
        next(dataset.train_shards(0))


def test_prefetch_sends_uint8_and_gives_the_hosts_float32():
    levels = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
    mesh = jax.make_mesh((1,), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    batch = {"image": levels, "label": np.arange(4, dtype=np.int32)}
    (placed,) = data.prefetch_to_device(iter([batch]), sharding=sharding)
    assert placed["image"].dtype == np.float32 and placed["image"].sharding.is_equivalent_to(sharding, 4)
    np.testing.assert_array_equal(placed["image"], np.divide(levels, np.float32(255), dtype=np.float32))
    np.testing.assert_array_equal(placed["label"], batch["label"])


def test_a_truncated_tfrecord_file_is_a_clear_error(tmp_path):
    from cnn_jax import tfrecord

    path = tmp_path / "cut.tfrecord"
    path.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00\x00")  # cut inside the header
    with pytest.raises(ValueError, match="cut short at byte 0"):
        tfrecord.record_offsets(str(path))
    whole = tfrecord.record(b"first")
    path.write_bytes(whole + tfrecord.record(b"second")[:-1])  # cut inside the second record's data
    with pytest.raises(ValueError, match=f"cut short at byte {len(whole)}"):
        tfrecord.record_offsets(str(path))


class _Interrupted:
    """A dataset whose training input stops with KeyboardInterrupt before global step ``at_step`` (1-based)."""

    def __init__(self, dataset, at_step: int):
        self._dataset, self._at_step = dataset, at_step

    def __getattr__(self, name):
        return getattr(self._dataset, name)

    def _stopping(self, batches, epoch, start_step):
        for step, batch in enumerate(batches, epoch * self._dataset.steps_per_epoch + start_step + 1):
            if step == self._at_step:
                raise KeyboardInterrupt("simulated interruption")
            yield batch

    def train_shards(self, epoch, start_step=0):
        return self._stopping(self._dataset.train_shards(epoch, start_step), epoch, start_step)

    def train_batches(self, epoch, start_step=0):
        return self._stopping(self._dataset.train_batches(epoch, start_step), epoch, start_step)


def test_an_interrupted_streaming_run_resumes_to_the_evaluations_of_an_uninterrupted_one(tmp_path, caplog):
    import flax.linen as nn

    from cnn_jax.train import TrainConfig, train_and_evaluate

    class Linear(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(10)(x.reshape(len(x), -1))

    dataset = data.load(data.DataConfig("mnist", data_dir=write_tfds(str(tmp_path / "tfds")), batch_size=8,
                                        eval_batch_size=12, input="stream"))  # 11 steps per epoch
    config = TrainConfig(epochs=2, learning_rate=0.05, checkpoint_every_steps=3, log_every_steps=4,
                         progress_bar=False, tensorboard=False)
    train_and_evaluate(Linear(), dataset, config, str(tmp_path / "whole"))
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(Linear(), _Interrupted(dataset, 19), config, str(tmp_path / "resumed"))
    with caplog.at_level(logging.INFO, logger="cnn_jax"):
        train_and_evaluate(Linear(), dataset, config, str(tmp_path / "resumed"))
    step = int(re.search(r"resuming from step (\d+)", caplog.text).group(1))
    assert 11 < step < 17 and step % 11, step  # mid-epoch (prefetch reads ahead, so before step 15)

    def evaluations(directory):
        with open(tmp_path / directory / "metrics.jsonl") as f:
            return [{k: v for k, v in r.items() if k.startswith("test_")} for r in map(json.loads, f)
                    if r["kind"] == "eval"]

    assert len(evaluations("whole")) == 2 and evaluations("whole") == evaluations("resumed")


@pytest.mark.slow
def test_a_killed_streaming_run_resumes_with_the_evaluations_of_an_uninterrupted_one(tmp_path):
    """kill -9 mid-epoch while streaming; the same command resumes and ends as a run never interrupted."""
    data_dir = write_tfds(str(tmp_path / "tfds"), shard_lengths=(70, 50, 40), num_test=40)
    workdir = tmp_path / "killed"
    command = [sys.executable, "-m", "experiments.mnist", f"--workdir={workdir}", f"--data_dir={data_dir}",
               "--epochs=3", "--batch_size=16", "--eval_batch_size=20", "--checkpoint_every_steps=3",
               "--log_every_steps=3", "--compilation_cache_dir="]
    env = {**os.environ, data.dataset.INPUT_ENV: "stream",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) as proc:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "epoch 1/3" in line:  # right after the first epoch's evaluation
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    assert any("streaming from disk tfds mnist" in line for line in seen)
    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step" in resumed.stderr
    straight = subprocess.run([part.replace(str(workdir), str(tmp_path / "straight")) for part in command],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]

    def evaluations(directory):
        with open(directory / "metrics.jsonl") as f:
            return [{k: v for k, v in r.items() if k.startswith("test_")} for r in map(json.loads, f)
                    if r["kind"] == "eval"]

    assert len(evaluations(workdir)) == 3
    assert evaluations(workdir) == evaluations(tmp_path / "straight")


# --- the decoded-dataset cache -----------------------------------------------------------------

def _read_without_tensorflow(monkeypatch, name, data_dir):
    """read_tfds with TensorFlow made unimportable: only the cache can answer."""
    from cnn_jax.data import tfds_source

    def no_tensorflow():
        raise AssertionError("TensorFlow was needed")

    monkeypatch.setattr(tfds_source, "import_tensorflow", no_tensorflow)
    return tfds_source.read_tfds(name, data_dir)


def test_a_dataset_read_once_is_read_again_from_the_cache_without_tensorflow(tmp_path, monkeypatch):
    from cnn_jax.caches import CACHE_ENV
    from cnn_jax.data import tfds_source

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    data_dir = write_tfds(str(tmp_path / "tfds"))
    first = tfds_source.read_tfds("mnist", data_dir)
    cached, checksum = sorted(os.listdir(tmp_path / "cache" / "input"))
    assert cached.startswith("tfds-mnist-") and cached.endswith(".npz") and checksum == cached + ".sha256"
    again = _read_without_tensorflow(monkeypatch, "mnist", data_dir)
    assert again.class_names == first.class_names and again.splits.keys() == first.splits.keys()
    for split, (images, labels) in first.splits.items():
        np.testing.assert_array_equal(again.splits[split][0], images)
        np.testing.assert_array_equal(again.splits[split][1], labels)
        assert again.splits[split][1].dtype == labels.dtype == np.int32


def test_a_corrupt_or_stale_cache_is_decoded_again_and_rewritten(tmp_path, monkeypatch, caplog):
    from cnn_jax.caches import CACHE_ENV
    from cnn_jax.data import tfds_source

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    data_dir = write_tfds(str(tmp_path / "tfds"))
    first = tfds_source.read_tfds("mnist", data_dir)
    (cached,) = (tmp_path / "cache" / "input").glob("*.npz")
    cached.write_bytes(cached.read_bytes()[:1000])  # cut short, as by a full disk
    with caplog.at_level(logging.WARNING):
        again = tfds_source.read_tfds("mnist", data_dir)
    assert f"ignoring the cache {cached}: its SHA-256 differs" in caplog.text
    np.testing.assert_array_equal(again.splits["train"][0], first.splits["train"][0])
    _read_without_tensorflow(monkeypatch, "mnist", data_dir)  # rewritten whole

    monkeypatch.undo()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    write_tfds(data_dir, shard_lengths=(30, 11))  # the dataset changed: other files, another key
    changed = tfds_source.read_tfds("mnist", data_dir)
    assert len(changed.splits["train"][1]) == 41 and len(list((tmp_path / "cache" / "input").glob("*.npz"))) == 2
