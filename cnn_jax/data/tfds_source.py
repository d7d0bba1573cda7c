"""Reads a tensorflow-datasets image classification dataset: whole into uint8 numpy arrays (``read_tfds``), or
record by record for streaming (``TfdsRecords``, ``decode_record``).

TensorFlow is imported only to decode: ``import cnn_jax.data`` stays cheap for code that needs only augmentation
or batching, and a dataset read once is kept decoded in the input cache (``decode_cache``), so reading it again
needs neither TensorFlow (seconds to import) nor decoding.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import urllib.parse
from typing import Optional

import numpy as np

from cnn_jax.data import decode_cache
from cnn_jax.files import files_key
from cnn_jax.tf_images import cover_and_center_crop, import_tensorflow
from cnn_jax.tfrecord import record_offsets

log = logging.getLogger(__name__)

TESTED_DATASETS = ("mnist", "cifar10", "tf_flowers")
_READ_CHUNK = 4096
_CONNECT_TIMEOUT_S = 5.0


class DatasetUnavailableError(RuntimeError):
    """The dataset is neither in the data dir nor downloadable (e.g. offline)."""


@dataclasses.dataclass(frozen=True)
class TfdsArrays:
    """What a tfds dataset holds, decoded: class names and (images, labels) per tfds split."""
    class_names: tuple[str, ...]
    splits: dict[str, tuple[np.ndarray, np.ndarray]]


def _check_reachable(urls, timeout_s: float = _CONNECT_TIMEOUT_S):
    """Raises OSError unless every http(s) host in ``urls`` accepts a connection.

    Offline, tfds's downloader retries each file with backoff for minutes before it gives up;
    this check fails in seconds instead.
    """
    for host, port in sorted({_host_port(url) for url in urls} - {None}):
        socket.create_connection((host, port), timeout=timeout_s).close()


def _host_port(url: str):
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return None
    return parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)


def _builder(tfds, name: str, data_dir: Optional[str]):
    """Returns a prepared builder, downloading once when allowed; every failure gets one clear error."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise ValueError(
            f"dataset {name!r} is not a tensorflow-datasets name; see tfds.list_builders() "
            f"(tested here: {', '.join(TESTED_DATASETS)}), nor a folder: {os.path.abspath(name)} does not "
            "exist (an image folder is a path to a folder with one subfolder per class)") from None
    if builder.is_prepared():
        return builder
    try:
        _check_reachable(builder.url_infos or {})
        builder.download_and_prepare()
    except Exception as err:  # offline, missing extras, interrupted: all mean "not available here".
        raise DatasetUnavailableError(
            f"dataset {name!r} is not in {builder.data_dir} and could not be downloaded "
            f"({type(err).__name__}: {err}). Fix: connect to the internet once so tfds can download it, "
            f"or pass --data_dir / set TFDS_DATA_DIR to a TFDS data dir that holds it "
            f"(e.g. one prepared elsewhere with `tfds build {name}`).") from err
    return builder


def _check_features(builder, name: str, image_size) -> tuple[str, ...]:
    keys = builder.info.supervised_keys
    if keys is None or len(keys) != 2:
        raise ValueError(
            f"dataset {name!r} has no (image, label) supervised keys; it is not an image classification dataset")
    image, label = (builder.info.features[k] for k in keys)
    if len(image.shape) != 3:
        raise ValueError(f"dataset {name!r} images have shape {image.shape}; expected (height, width, channels)")
    if image_size is None and None in image.shape[:2]:
        raise ValueError(f"dataset {name!r} has images of varying size; set image_size=(height, width) to resize them")
    if not hasattr(label, "names"):
        raise ValueError(f"dataset {name!r} labels are not class labels ({type(label).__name__})")
    return tuple(label.names)


def _read_split(tf, tfds, builder, split: str, image_size):
    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    if image_size is not None:
        ds = ds.map(lambda image, label: (cover_and_center_crop(tf, image, image_size), label),
                    num_parallel_calls=tf.data.AUTOTUNE)
    chunks = list(tfds.as_numpy(ds.batch(_READ_CHUNK)))
    images = np.concatenate([c[0] for c in chunks])
    labels = np.concatenate([c[1] for c in chunks]).astype(np.int32)
    return images, labels


def read_tfds(name: str, data_dir: Optional[str] = None,
              image_size: Optional[tuple[int, int]] = None) -> TfdsArrays:
    """Reads every split of tfds dataset ``name`` in its stored order.

    ``image_size`` resizes (aspect kept, centre cropped); it is required for datasets whose
    images vary in size, such as tf_flowers. ``data_dir=None`` is tfds's default, which honours
    ``TFDS_DATA_DIR``.

    The decoded arrays are cached (``decode_cache``) under a key of the dataset's files (path, size and
    modification time of each), the image size and the cache format, and read from there while the key holds: the
    arrays are the same, and TensorFlow is not imported. A cache file that is damaged, unverified or does not match
    the dataset is a miss: decoded again and rewritten.
    """
    import tensorflow_datasets as tfds

    builder = _builder(tfds, name, data_dir)
    class_names = _check_features(builder, name, image_size)
    cache = _cache_path(builder, image_size)
    counts = {split: builder.info.splits[split].num_examples for split in builder.info.splits}
    splits = decode_cache.load_arrays(cache, class_names, counts)
    if splits is None:
        tf = import_tensorflow()
        splits = {split: _read_split(tf, tfds, builder, split, image_size) for split in builder.info.splits}
        decode_cache.save_arrays(cache, class_names, splits)
    else:
        log.info("decoded %s from the cache %s", builder.info.name, cache)
    return TfdsArrays(class_names, splits)


def _cache_path(builder, image_size) -> str:
    """The cache file of the dataset decoded at ``image_size``: keyed by its files and the records each split reads."""
    instructions = [(split, instruction) for split in sorted(builder.info.splits)
                    for instruction in builder.info.splits[split].file_instructions]
    key = files_key([os.fspath(instruction.filename) for _, instruction in instructions],
                    decode_cache.FORMAT, builder.info.full_name, image_size,
                    [(split, instruction.skip, instruction.take) for split, instruction in instructions])
    return decode_cache.cache_path(f"tfds-{builder.info.name}-{key}.npz")


def _stored_order(tf, instructions, disable_shuffling: bool) -> np.ndarray:
    """(file, record) of each example of a split, (N, 2), in the order ``builder.as_dataset(shuffle_files=False)``
    reads them: tfds's own interleave of its file instructions (cycle 16, or 1 for ordered datasets; blocks of 16)."""
    files = np.arange(len(instructions), dtype=np.int64)
    skips = np.asarray([i.skip for i in instructions], np.int64)
    takes = np.asarray([i.take if i.take >= 0 else i.examples_in_shard - i.skip for i in instructions], np.int64)
    ds = tf.data.Dataset.from_tensor_slices((files, skips, takes)).interleave(
        lambda f, s, t: tf.data.Dataset.range(s, s + t).map(lambda r: tf.stack([f, r])),
        cycle_length=1 if disable_shuffling else 16, block_length=16, deterministic=True)
    chunks = list(ds.batch(1 << 16).as_numpy_iterator())
    return np.concatenate(chunks) if chunks else np.zeros((0, 2), np.int64)


class TfdsRecords:
    """Random access to the encoded (serialized tf.Example) records of one tfds split, by stored position.

    TFRecord files have no index, so one is built from the record headers (a few syscalls per record, no data
    read); the files stay where tfds wrote them, read-only. Position i is the i-th example ``read_tfds`` reads.
    """

    def __init__(self, tf, builder, split: str):
        if "tfrecord" not in str(builder.info.file_format).lower():
            raise ValueError(f"streaming reads TFRecord files; {builder.info.name} is stored as "
                             f"{builder.info.file_format}")
        instructions = builder.info.splits[split].file_instructions
        self._paths = [os.fspath(i.filename) for i in instructions]
        order = _stored_order(tf, instructions, bool(builder.info.disable_shuffling))
        index = [record_offsets(path) for path in self._paths]
        first = np.cumsum([0] + [len(offsets) for offsets, _ in index])[:-1]  # each file's first record
        flat = first[order[:, 0]] + order[:, 1]
        self._file = order[:, 0].astype(np.int32)
        self._offset = np.concatenate([offsets for offsets, _ in index])[flat]
        self._length = np.concatenate([lengths for _, lengths in index])[flat]
        self._fds: Optional[list[int]] = None

    def __len__(self) -> int:
        return len(self._file)

    @property
    def mean_bytes(self) -> float:
        """The mean size of a serialized record."""
        return float(self._length.mean()) if len(self._length) else 0.0

    def read(self, positions) -> list[bytes]:
        """The serialized records at ``positions``, in that order."""
        if self._fds is None:
            self._fds = [os.open(path, os.O_RDONLY) for path in self._paths]
        return [os.pread(self._fds[self._file[i]], int(self._length[i]), int(self._offset[i])) for i in positions]

    def __del__(self):
        for fd in self._fds or ():
            os.close(fd)


def open_tfds(name: str, data_dir: Optional[str] = None, image_size: Optional[tuple[int, int]] = None):
    """What choosing how to read a tfds dataset needs, without reading it or importing TensorFlow: the builder,
    its class names and the decoded image shape (H, W, C)."""
    import tensorflow_datasets as tfds

    builder = _builder(tfds, name, data_dir)
    class_names = _check_features(builder, name, image_size)
    image = builder.info.features[builder.info.supervised_keys[0]]
    height, width = image_size or image.shape[:2]
    return builder, class_names, (int(height), int(width), int(image.shape[2] or 3))


def decode_record(tf, builder, serialized, image_size):
    """A serialized record as (uint8 image, int32 label), decoded as ``read_tfds`` decodes it: tfds's own
    feature decoding, then the same resize."""
    image_key, label_key = builder.info.supervised_keys
    example = builder.info.features.deserialize_example(serialized)
    image = example[image_key]
    if image_size is not None:
        image = cover_and_center_crop(tf, image, image_size)
    return image, tf.cast(example[label_key], tf.int32)
