"""Datasets: seeded splits and batch orders over images held in host memory or streamed from disk.

Splits. The test split is the source's ``test`` split, else its ``validation`` split, else a
fixed 20% of its train split (``TEST_FRACTION``, drawn with a fixed seed so every run of every
experiment is scored on the same examples; tf_flowers has only a train split). Validation is a
``validation_fraction`` slice of the remaining train examples drawn with ``config.seed``, and
``num_train_examples`` keeps a seeded subset of what is left. Splits are index arrays into the source's
examples, so they are the same whether the pixels sit in memory or on disk.

``load`` reads a tfds name, or a folder with one subfolder per class (``image_folder``): a folder has no test
split of its own, so it is split as tf_flowers is. A dataset whose decoded pixels fit in ``MEMORY_LIMIT_BYTES``
is decoded once into uint8 arrays; a larger one is streamed: tf.data reads and decodes each batch's files or
records as training runs (``streaming``), so host memory stays flat in the dataset's size. Which path runs is
logged; ``DataConfig.input`` (or ``$CNN_JAX_INPUT``) forces one, for measurements.

Order. Epoch e's order is ``default_rng((seed, 0, e)).permutation(num_train)`` and step s's global batch is
rows [sB, (s+1)B) of it, whatever the path and the process count. With P processes process p reads only rows
[pB/P, (p+1)B/P) of every global batch (``train_shards``, ``eval_shards``): the index is sharded, not the records.

Batches are dicts of numpy arrays: ``"image"`` (B, H, W, C), ``"label"`` int32 (B,), and for eval
batches ``"mask"`` float32 (B,), 1 for real examples and 0 for padding. ``train_batches`` and ``eval_batches``
give whole global batches with float32 images in [0, 1] (for inspection and host-side use); the shards give
uint8 images, which ``prefetch_to_device`` sends to the devices and turns into float32 there.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Iterator, Optional

import numpy as np

from cnn_jax.data import image_folder, streaming, tfds_source
from cnn_jax.data.image_files import check_image_size
from cnn_jax.settings import bookkeeping
from cnn_jax.tf_images import import_tensorflow

log = logging.getLogger(__name__)

TEST_FRACTION = 0.2
_TEST_SPLIT_SEED = 0
# Distinct streams so that the shuffles and the splits never share random numbers.
_SHUFFLE_STREAM, _HOLDOUT_STREAM, _TEST_STREAM = 0, 1, 2
EVAL_SPLITS = ("validation", "test")
MEMORY_LIMIT_BYTES = 1 << 30  # decoded datasets up to 1 GiB are held in memory, larger ones streamed
INPUT_MODES = ("auto", "memory", "stream")
INPUT_ENV = "CNN_JAX_INPUT"  # DataConfig.input's default when it is None ("memory" or "stream"), for measurements


MAX_IMAGE_SIDE = 4096  # pixels; far beyond what a CNN is trained at, and a batch of them still fits in memory


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which dataset to load and how to split and batch it.

    Attributes:
      dataset: a tensorflow-datasets name, or the path of a folder with one subfolder of images
        per class.
      data_dir: TFDS data dir (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets).
      batch_size: global training batch size (all devices and processes together).
      eval_batch_size: evaluation batch size; default: batch_size.
      image_size: resize images to this (height, width), aspect kept and centre cropped;
        default: the dataset's own size.
      validation_fraction: hold out this fraction of the training split for validation (and
        keep the best checkpoint by it).
      num_train_examples: train on a seeded subset of this size.
      seed: seeds the data order, the validation hold-out and the subset.
      input: how batches are read: auto (in memory below a decoded size, else streamed from
        disk), memory or stream; the same batches either way; default: $CNN_JAX_INPUT, else auto.
    """
    dataset: str
    data_dir: Optional[str] = bookkeeping(None)
    batch_size: int = 128
    eval_batch_size: Optional[int] = bookkeeping(None)
    image_size: Optional[tuple[int, int]] = None
    validation_fraction: float = 0.0
    num_train_examples: Optional[int] = None
    seed: int = 0
    input: Optional[str] = bookkeeping(None)

    def __post_init__(self):
        if not self.dataset:
            raise ValueError("DataConfig.dataset is empty; name a dataset, e.g. 'mnist' or 'cifar10'")
        for field in ("batch_size", "eval_batch_size", "num_train_examples"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"DataConfig.{field} must be a positive integer, got {value!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"DataConfig.validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.image_size is not None:
            if len(self.image_size) != 2 or any(int(s) < 1 for s in self.image_size):
                raise ValueError(
                    f"DataConfig.image_size must be (height, width) of positive ints, got {self.image_size}")
            object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
            if max(self.image_size) > MAX_IMAGE_SIDE:
                gib = self.batch_size * self.image_size[0] * self.image_size[1] * 3 * 4 / 2**30
                raise ValueError(f"DataConfig.image_size={self.image_size} is too large: one batch of "
                                 f"{self.batch_size} such images takes {gib:,.0f} GiB as float32; use at most "
                                 f"{MAX_IMAGE_SIDE} pixels a side (ImageNet models take 224)")
        if self.seed < 0:
            raise ValueError(f"DataConfig.seed must be >= 0, got {self.seed}")
        if self.resolved_input not in INPUT_MODES:
            raise ValueError(f"DataConfig.input (or ${INPUT_ENV}) must be one of {INPUT_MODES}, "
                             f"got {self.resolved_input!r}")

    @property
    def resolved_input(self) -> str:
        """``input``, else $CNN_JAX_INPUT, else "auto"."""
        return self.input or os.environ.get(INPUT_ENV) or "auto"

    @property
    def resolved_eval_batch_size(self) -> int:
        return self.eval_batch_size or self.batch_size


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Facts about a loaded dataset that models and reports need."""
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    num_train: int
    num_validation: int
    num_test: int
    num_skipped: int = 0  # files of an image folder that did not decode


def _to_float(images: np.ndarray) -> np.ndarray:
    return np.divide(images, np.float32(255), dtype=np.float32)


def _process() -> tuple[int, int]:
    """(index, count) of this process in the run; JAX is imported only when shards are asked for."""
    import jax

    return jax.process_index(), jax.process_count()


def _process_rows(batch_size: int, what: str) -> tuple[int, int]:
    """This process's rows [pB/P, (p+1)B/P) of a global batch of ``batch_size``."""
    index, count = _process()
    if batch_size % count:
        raise ValueError(f"the global {what} {batch_size} is not divisible by the {count} processes: "
                         f"use a multiple of {count}")
    return index * batch_size // count, (index + 1) * batch_size // count


class Dataset:
    """Train, validation and test splits over a source of examples, with deterministic batch iterators.

    ``source`` reads examples by index (``streaming.ArraySource`` in memory, ``streaming.FolderSource`` or
    ``streaming.TfdsSource`` from disk); ``splits`` maps each split to (the source's pool, example indices).
    """

    def __init__(self, info: DatasetInfo, config: DataConfig, source, splits: dict[str, tuple[str, np.ndarray]]):
        self.info = info
        self.config = config
        self.source = source
        self._splits = splits
        self.steps_per_epoch = info.num_train // config.batch_size

    @property
    def streaming(self) -> bool:
        """Whether examples are read from disk as batches are asked for (else they sit in host memory)."""
        return not isinstance(self.source, streaming.ArraySource)

    def _train_rows(self, epoch: int, start_step: int, lo: int, hi: int) -> np.ndarray:
        """Source indices of rows [lo, hi) of every global batch from ``start_step`` to the epoch's end."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step must be in [0, {self.steps_per_epoch}] (steps_per_epoch), got {start_step}")
        order = np.random.default_rng((self.config.seed, _SHUFFLE_STREAM, epoch)).permutation(self.info.num_train)
        steps = np.arange(start_step, self.steps_per_epoch)
        positions = (steps[:, None] * self.config.batch_size + np.arange(lo, hi)[None, :]).ravel()
        return self._splits["train"][1][order[positions]]

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
        """Shuffled full global batches of one epoch (remainder dropped), float32 images in [0, 1].

        The order is a pure function of (seed, epoch), so resuming at ``start_step`` replays
        exactly the batches an uninterrupted run would have seen.
        """
        rows = self._train_rows(epoch, start_step, 0, self.config.batch_size)
        return ({"image": _to_float(images), "label": labels}
                for images, labels in self.source.batches("train", rows, self.config.batch_size))

    def train_shards(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
        """This process's rows of each global batch of ``train_batches``, uint8 images (for the devices)."""
        lo, hi = _process_rows(self.config.batch_size, "batch size")
        rows = self._train_rows(epoch, start_step, lo, hi)
        return ({"image": images, "label": labels} for images, labels in self.source.batches("train", rows, hi - lo))

    def _eval_split(self, split: str) -> tuple[str, np.ndarray]:
        if split not in EVAL_SPLITS:
            raise ValueError(f"eval split must be one of {EVAL_SPLITS}, got {split!r}")
        if split == "validation" and self.info.num_validation == 0:
            raise ValueError("this dataset has no validation split; set DataConfig.validation_fraction > 0")
        return self._splits[split]

    def eval_batches(self, split: str) -> Iterator[dict]:
        """Every example of ``split`` once, in a fixed order, in global batches of one shape, float32 images.

        The last batch is padded with zero images and marked by ``"mask"`` (0 for padding).
        """
        pool, index = self._eval_split(split)
        batches = self._eval_iterator(pool, index, 0, self.config.resolved_eval_batch_size)
        return ({**batch, "image": _to_float(batch["image"])} for batch in batches)

    def eval_shards(self, split: str) -> Iterator[dict]:
        """This process's rows of each padded global batch of ``eval_batches``, uint8 images."""
        pool, index = self._eval_split(split)
        lo, hi = _process_rows(self.config.resolved_eval_batch_size, "eval batch size")
        return self._eval_iterator(pool, index, lo, hi)

    def _eval_iterator(self, pool: str, index: np.ndarray, lo: int, hi: int) -> Iterator[dict]:
        """Rows [lo, hi) of each global eval batch over ``index``, padded; only real rows are read."""
        size, local = self.config.resolved_eval_batch_size, hi - lo
        starts = np.arange(0, len(index), size)
        counts = np.clip(len(index) - starts - lo, 0, local)  # real rows of each batch in [lo, hi)
        positions = np.concatenate([np.arange(s + lo, s + lo + c) for s, c in zip(starts, counts)] or [[]])
        chunks = self.source.batches(pool, index[positions.astype(np.int64)], local)
        empty = (np.zeros((0, *self.info.image_shape), np.uint8), np.zeros(0, np.int32))
        for count in counts:  # only the last batch can be short, so chunks line up with batches
            image, label = next(chunks) if count else empty
            pad = local - len(label)
            yield {
                "image": np.pad(image, ((0, pad), (0, 0), (0, 0), (0, 0))),
                "label": np.pad(label, (0, pad)),
                "mask": np.pad(np.ones(len(label), np.float32), (0, pad)),
            }

    def train_class_counts(self) -> np.ndarray:
        """Examples of each class in the train split, int64 (num_classes,): for class weights."""
        pool, index = self._splits["train"]
        return np.bincount(self.source.labels(pool, index), minlength=self.info.num_classes)


def process_train_batches(dataset, epoch: int, start_step: int = 0) -> Iterator[dict]:
    """This process's rows of every global train batch: ``dataset.train_shards``, or for a dataset that only
    yields whole global batches (a test double, a user's own) its ``train_batches`` sliced here."""
    if hasattr(dataset, "train_shards"):
        return dataset.train_shards(epoch, start_step)
    return _sliced(dataset.train_batches(epoch, start_step), "batch size")


def process_eval_batches(dataset, split: str) -> Iterator[dict]:
    """As ``process_train_batches``, for the eval batches of ``split``."""
    if hasattr(dataset, "eval_shards"):
        return dataset.eval_shards(split)
    return _sliced(dataset.eval_batches(split), "eval batch size")


def _sliced(batches: Iterator[dict], what: str) -> Iterator[dict]:
    for batch in batches:
        lo, hi = _process_rows(len(batch["label"]), what)
        yield {key: value[lo:hi] for key, value in batch.items()}


def _hold_out(num: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices 0..num-1 at random into (kept, held out); both sorted, held out has round(fraction*num)."""
    order = rng.permutation(num)
    held = int(round(fraction * num))
    return np.sort(order[held:]), np.sort(order[:held])


def _split(config: DataConfig, num_train: int, num_test: Optional[int]) -> dict[str, tuple[str, np.ndarray]]:
    """Each split as (pool, indices) of a source with ``num_train`` train examples and ``num_test`` test ones
    (None: the source has no test split, so a fixed fraction of train is held out)."""
    train = np.arange(num_train)
    if num_test is None:
        train, held = _hold_out(num_train, TEST_FRACTION, np.random.default_rng((_TEST_SPLIT_SEED, _TEST_STREAM)))
        test = ("train", held)
    else:
        test = ("test", np.arange(num_test))
    rng = np.random.default_rng((config.seed, _HOLDOUT_STREAM))
    kept, held = _hold_out(len(train), config.validation_fraction, rng)
    train, validation = train[kept], train[held]
    if config.num_train_examples is not None:
        if config.num_train_examples > len(train):
            raise ValueError(f"num_train_examples={config.num_train_examples} exceeds the {len(train)} "
                             f"train examples left after the validation hold-out; lower it or set it to None")
        train = train[np.sort(rng.permutation(len(train))[:config.num_train_examples])]
    if len(test[1]) == 0:
        raise ValueError(f"dataset {config.dataset!r} leaves no test example ({num_train} train examples, of which "
                         f"{TEST_FRACTION:.0%} are held out for testing when it has no test split): give it at least "
                         f"{int(np.ceil(0.5 / TEST_FRACTION))} images, and a few per class for a meaningful score")
    if len(train) < config.batch_size:
        raise ValueError(f"batch_size={config.batch_size} exceeds the {len(train)} train examples; "
                         f"lower batch_size so an epoch has at least one step")
    return {"train": ("train", train), "validation": ("train", validation), "test": test}


def _dataset(config: DataConfig, class_names, image_shape, source, num_train: int, num_test: Optional[int],
             num_skipped: int = 0) -> Dataset:
    splits = _split(config, num_train, num_test)
    info = DatasetInfo(
        name=config.dataset, num_classes=len(class_names), class_names=tuple(class_names),
        image_shape=tuple(int(s) for s in image_shape), num_train=len(splits["train"][1]),
        num_validation=len(splits["validation"][1]), num_test=len(splits["test"][1]), num_skipped=num_skipped)
    return Dataset(info, config, source, splits)


def _check_arrays(name: str, images: np.ndarray, labels: np.ndarray, num_classes: int):
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{name} images must be uint8 NHWC, got {images.dtype} of shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{name} labels must be 1-D with one label per image, got shape {labels.shape} "
                         f"for {len(images)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name} labels must be in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")


def from_arrays(config: DataConfig, class_names, train: tuple[np.ndarray, np.ndarray],
                test: Optional[tuple[np.ndarray, np.ndarray]] = None) -> Dataset:
    """Builds a Dataset from uint8 NHWC images and integer labels, applying the config's splits.

    Without ``test``, a fixed ``TEST_FRACTION`` of ``train`` becomes the test split. The arrays
    must already have ``config.image_size`` when it is set (readers such as ``load`` resize).
    """
    class_names = tuple(class_names)
    train = (np.asarray(train[0]), np.asarray(train[1]).astype(np.int32))
    _check_arrays("train", *train, len(class_names))
    if config.image_size is not None and train[0].shape[1:3] != config.image_size:
        raise ValueError(f"images are {train[0].shape[1:3]} but config.image_size is {config.image_size}; "
                         f"resize them first or set image_size=None")
    pools = {"train": train}
    if test is not None:
        test = (np.asarray(test[0]), np.asarray(test[1]).astype(np.int32))
        _check_arrays("test", *test, len(class_names))
        if test[0].shape[1:] != train[0].shape[1:]:
            raise ValueError(f"test images have shape {test[0].shape[1:]} but train images {train[0].shape[1:]}")
        pools["test"] = test
    return _dataset(config, class_names, train[0].shape[1:], streaming.ArraySource(pools), len(train[1]),
                    None if test is None else len(test[1]))


def is_folder_path(dataset: str) -> bool:
    """Whether ``dataset`` names a folder rather than a tfds name: an existing folder, an absolute path, one
    starting with "." or "~", or a relative path whose first part is a folder here ("photos/flowers"; tfds
    names such as "mnist/3.0.1" have no folder "mnist" beside them)."""
    first = dataset.split(os.sep)[0]
    return (os.path.isabs(dataset) or dataset.startswith((".", "~")) or os.path.isdir(dataset)
            or (os.sep in dataset and os.path.isdir(first)))


def _streams(config: DataConfig, examples: int, image_shape, what: str) -> bool:
    """Whether to stream: forced by ``config.input``, else when the decoded pixels exceed MEMORY_LIMIT_BYTES.
    Logs the choice."""
    decoded = examples * math.prod(image_shape)
    choice = config.resolved_input
    stream = decoded > MEMORY_LIMIT_BYTES if choice == "auto" else choice == "stream"
    reason = (f"{decoded / 2**20:,.0f} MiB decoded {'>' if stream else '<='} the "
              f"{MEMORY_LIMIT_BYTES / 2**20:,.0f} MiB limit" if choice == "auto" else f"input={choice!r}")
    log.info("%s %s: %d examples of %s (%s)", "streaming from disk" if stream else "reading into memory", what,
             examples, "x".join(map(str, image_shape)), reason)
    return stream


def load(config: DataConfig) -> Dataset:
    """Reads ``config.dataset`` and splits it: a tensorflow-datasets name, or a folder path
    (``image_folder.read_image_folder``; ``config.image_size`` required). Small datasets are decoded into
    host memory, large ones streamed from disk (see the module docstring); the batches are the same.

    Raises ValueError for a name tfds does not know or a path that is not an image folder, and
    ``DatasetUnavailableError`` when a tfds dataset is not in the data dir and cannot be downloaded.
    """
    if is_folder_path(config.dataset):
        return _load_folder(config)
    builder, class_names, image_shape = tfds_source.open_tfds(config.dataset, config.data_dir, config.image_size)
    splits = builder.info.splits
    if "train" not in splits:
        raise ValueError(f"dataset {config.dataset!r} has no train split (splits: {sorted(splits)})")
    test_split = next((split for split in ("test", "validation") if split in splits), None)
    examples = sum(splits[split].num_examples for split in splits)
    if _streams(config, examples, image_shape, f"tfds {config.dataset}"):
        tf = import_tensorflow()
        pools = {"train": tfds_source.TfdsRecords(tf, builder, "train")}
        if test_split is not None:
            pools["test"] = tfds_source.TfdsRecords(tf, builder, test_split)
        source = streaming.TfdsSource(tf, builder, config.image_size, pools)
        return _dataset(config, class_names, image_shape, source, len(pools["train"]),
                        len(pools["test"]) if test_split else None)
    arrays = tfds_source.read_tfds(config.dataset, config.data_dir, config.image_size)
    return from_arrays(config, arrays.class_names, arrays.splits["train"],
                       arrays.splits[test_split] if test_split else None)


def _load_folder(config: DataConfig, channels: int = 3) -> Dataset:
    size = check_image_size(config.image_size, f"image folder {config.dataset}")
    root, _, paths, _ = image_folder.list_image_folder(config.dataset)
    if not _streams(config, len(paths), (*size, channels), f"image folder {root}"):
        folder = image_folder.read_image_folder(config.dataset, size, channels)
        dataset = from_arrays(config, folder.class_names, (folder.images, folder.labels))
        dataset.info = dataclasses.replace(dataset.info, num_skipped=len(folder.skipped))
        return dataset
    class_names, paths, labels, skipped = image_folder.scan_image_folder(config.dataset, size, channels)
    source = streaming.FolderSource(paths, labels, size, channels)
    return _dataset(config, class_names, (*size, channels), source, len(paths), None, len(skipped))
