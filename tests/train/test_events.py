"""The TensorFlow-free TensorBoard writer and its TFRecord framing (``cnn_jax.tfrecord``), read back with
TensorFlow's own readers."""
from __future__ import annotations

import os
import tempfile
import zlib

import numpy as np
import pytest
from helpers import examples
from hypothesis import given
from hypothesis import strategies as st

from cnn_jax import tfrecord
from cnn_jax.train.metrics import MetricWriter


def test_crc32c_matches_the_standard_check_values():
    # RFC 3720, B.4: 32 bytes of zeros, of 0xff, and an ascending run; "123456789" is the usual check value.
    assert tfrecord.crc32c(b"123456789") == 0xE3069283
    assert tfrecord.crc32c(bytes(32)) == 0x8A9136AA
    assert tfrecord.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert tfrecord.crc32c(bytes(range(32))) == 0x46DD794E
    assert tfrecord.crc32c(b"123456789") != zlib.crc32(b"123456789")  # not the IEEE CRC-32


@examples(25)
@given(st.binary(max_size=300))
def test_records_are_read_back_by_tensorflow(data):
    tf = pytest.importorskip("tensorflow")
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "records")
        with open(path, "wb") as f:
            f.write(tfrecord.record(data) + tfrecord.record(data[::-1]))
        # TFRecordDataset checks both CRCs of every record and fails on a mismatch.
        assert list(tf.data.TFRecordDataset(path).as_numpy_iterator()) == [data, data[::-1]]
        with tf.io.TFRecordWriter(path + ".tf") as writer:  # and the index finds TensorFlow's records
            writer.write(data)
            writer.write(data[::-1])
        for written in (path, path + ".tf"):
            offsets, lengths = tfrecord.record_offsets(written)
            with open(written, "rb") as f:
                contents = f.read()
            assert [contents[o:o + n] for o, n in zip(offsets, lengths)] == [data, data[::-1]]


def test_metric_writer_scalars_reach_tensorboard_as_tensorflow_reads_them(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from tensorflow.core.util import event_pb2

    writer = MetricWriter(str(tmp_path), tensorboard=True)
    writer.write({"kind": "train", "step": 100, "epoch": 0.5, "train_loss": 0.25, "learning_rate": 1e-3})
    writer.write({"kind": "eval", "step": 200, "epoch": 1, "test_accuracy": 0.9875})
    writer.close()
    (name,) = os.listdir(tmp_path / "tensorboard")
    assert name.startswith("events.out.tfevents.")
    raw = tf.data.TFRecordDataset(str(tmp_path / "tensorboard" / name)).as_numpy_iterator()
    parsed = [event_pb2.Event.FromString(r) for r in raw]
    assert parsed[0].file_version == "brain.Event:2"
    scalars = [(e.step, v.tag, v.simple_value) for e in parsed[1:] for v in e.summary.value]
    assert [(s, t) for s, t, _ in scalars] == [(100, "train_loss"), (100, "learning_rate"), (200, "test_accuracy")]
    np.testing.assert_allclose([v for *_, v in scalars], [0.25, 1e-3, 0.9875], rtol=1e-7)  # float32
    assert all(e.wall_time > 1e9 for e in parsed)
