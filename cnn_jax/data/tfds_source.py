"""Reads a tensorflow-datasets image classification dataset into uint8 numpy arrays.

TensorFlow is imported only when a dataset is read, so ``import cnn_jax.data`` stays cheap for
code that needs only augmentation or batching.
"""
from __future__ import annotations

import dataclasses
import socket
import urllib.parse
from typing import Optional

import numpy as np

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


def import_tfds():
    import tensorflow as tf
    import tensorflow_datasets as tfds
    try:  # TF is only a reader here: keep it off the GPU, which JAX owns.
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF was initialised earlier by the caller; its devices are its business.
        pass
    return tf, tfds


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
            f"(tested here: {', '.join(TESTED_DATASETS)})") from None
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


def cover_and_center_crop(tf, image, size):
    """Keeps the aspect ratio: scales the image to cover ``size``, then crops the centre."""
    h, w = tf.unstack(tf.cast(tf.shape(image)[:2], tf.float32))
    scale = tf.maximum(size[0] / h, size[1] / w)
    covering = tf.cast(tf.math.ceil(tf.stack([h * scale, w * scale])), tf.int32)
    resized = tf.image.resize(image, covering, method="bilinear", antialias=True)
    cropped = tf.image.resize_with_crop_or_pad(resized, size[0], size[1])
    return tf.cast(tf.clip_by_value(tf.round(cropped), 0, 255), tf.uint8)


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
    """
    tf, tfds = import_tfds()
    builder = _builder(tfds, name, data_dir)
    class_names = _check_features(builder, name, image_size)
    splits = {split: _read_split(tf, tfds, builder, split, image_size) for split in builder.info.splits}
    return TfdsArrays(class_names, splits)
