"""Sources of examples read by index: decoded arrays in memory, or files and records decoded as they stream.

Each source answers ``batches(pool, rows, size)``: the examples at indices ``rows`` of ``pool`` ("train" or
"test"), in that order, as (uint8 images, int32 labels) chunks of ``size`` (the last one may be shorter). The
caller (``dataset.Dataset``) computes the rows from the seeded order, so a source holds no iterator state and
resuming mid-epoch is a matter of asking for the remaining rows.

The streaming sources are tf.data pipelines over the rows: reading and decoding run in tf.data's C++ thread
pool, with the TF ops the in-memory readers use, so the pixels are bit for bit the same; at most
``PREFETCH_BATCHES`` decoded batches wait ahead of the consumer, which keeps host memory flat.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from cnn_jax.data import tfds_source
from cnn_jax.data.image_files import decode_file, tf_paths
from cnn_jax.tf_images import import_tensorflow

PREFETCH_BATCHES = 2
READ_BYTES = 4 << 20  # serialized records read per call into Python (at least one batch): few calls an epoch


class ArraySource:
    """Pools of decoded examples held in host memory: {pool: (uint8 images (N, H, W, C), int32 labels)}."""

    def __init__(self, pools: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.pools = pools

    def batches(self, pool: str, rows: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        images, labels = self.pools[pool]
        for start in range(0, len(rows), size):
            index = rows[start:start + size]
            yield images[index], labels[index]

    def labels(self, pool: str, rows: np.ndarray) -> np.ndarray:
        return self.pools[pool][1][rows]


def _numpy_batches(tf, ds, decode, size: int):
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(size).prefetch(PREFETCH_BATCHES).as_numpy_iterator()


class FolderSource:
    """Image files (the readable ones of an image folder, with their labels) decoded as batches are read."""

    def __init__(self, paths, labels: np.ndarray, image_size: tuple[int, int], channels: int = 3):
        self._paths = np.asarray(paths, dtype=object)
        self._labels = np.asarray(labels, np.int32)
        self._image_size, self._channels = tuple(image_size), channels

    def batches(self, pool: str, rows: np.ndarray, size: int):
        if pool != "train":
            raise KeyError(f"an image folder has one pool of examples, 'train'; got {pool!r}")
        if not len(rows):
            return iter(())
        tf = import_tensorflow()
        files = tf.data.Dataset.from_tensor_slices((tf_paths(self._paths[rows]), self._labels[rows]))
        return _numpy_batches(tf, files, lambda path, label: (
            decode_file(tf, path, self._image_size, self._channels), label), size)

    def labels(self, pool: str, rows: np.ndarray) -> np.ndarray:
        return self._labels[rows]


class TfdsSource:
    """The records of tfds splits ({pool: ``tfds_source.TfdsRecords``}), decoded as batches are read.

    A Python generator reads each batch's serialized records (positioned reads, no decoding); tf.data decodes
    them in parallel with tfds's own feature decoders and resizes as ``read_tfds`` does.
    """

    def __init__(self, tf, builder, image_size, pools: dict[str, tfds_source.TfdsRecords]):
        self._tf, self._builder, self._image_size, self._pools = tf, builder, image_size, pools

    def _serialized(self, pool: str, rows: np.ndarray, size: int):
        records = self._pools[pool]
        step = max(size, int(READ_BYTES // max(1.0, records.mean_bytes)))

        def chunks():
            for start in range(0, len(rows), step):
                yield np.asarray(records.read(rows[start:start + step]), dtype=object)

        spec = self._tf.TensorSpec([None], self._tf.string)
        return self._tf.data.Dataset.from_generator(chunks, output_signature=spec).unbatch()

    def batches(self, pool: str, rows: np.ndarray, size: int):
        if not len(rows):
            return iter(())
        tf, builder, image_size = self._tf, self._builder, self._image_size
        return _numpy_batches(tf, self._serialized(pool, rows, size),
                              lambda record: tfds_source.decode_record(tf, builder, record, image_size), size)

    def labels(self, pool: str, rows: np.ndarray) -> np.ndarray:
        """The labels at ``rows``: one pass over their records, parsing only the label."""
        tf, key = self._tf, self._builder.info.supervised_keys[1]
        spec = {key: tf.io.FixedLenFeature([], tf.int64)}
        records = self._serialized(pool, rows, 4096).batch(4096)
        parsed = records.map(lambda r: tf.io.parse_example(r, spec)[key], num_parallel_calls=tf.data.AUTOTUNE)
        return np.concatenate([np.zeros(0, np.int64), *parsed.as_numpy_iterator()]).astype(np.int32)
