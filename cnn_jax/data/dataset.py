"""In-memory datasets: uint8 arrays on the host, batched and shuffled with numpy.

Splits. The test split is the source's ``test`` split, else its ``validation`` split, else a
fixed 20% of its train split (``TEST_FRACTION``, drawn with a fixed seed so every run of every
experiment is scored on the same examples; tf_flowers has only a train split). Validation is a
``validation_fraction`` slice of the remaining train examples drawn with ``config.seed``, and
``num_train_examples`` keeps a seeded subset of what is left.

``load`` reads a tfds name, or a folder with one subfolder per class (``image_folder``): a folder has no test
split of its own, so it is split as tf_flowers is.

Batches are dicts of numpy arrays: ``"image"`` float32 (B, H, W, C) in [0, 1], ``"label"`` int32
(B,), and for eval batches ``"mask"`` float32 (B,), 1 for real examples and 0 for padding.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Optional

import numpy as np

from cnn_jax.data import image_folder, tfds_source
from cnn_jax.settings import bookkeeping

TEST_FRACTION = 0.2
_TEST_SPLIT_SEED = 0
# Distinct streams so that the shuffles and the splits never share random numbers.
_SHUFFLE_STREAM, _HOLDOUT_STREAM, _TEST_STREAM = 0, 1, 2
EVAL_SPLITS = ("validation", "test")


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
    """
    dataset: str
    data_dir: Optional[str] = bookkeeping(None)
    batch_size: int = 128
    eval_batch_size: Optional[int] = bookkeeping(None)
    image_size: Optional[tuple[int, int]] = None
    validation_fraction: float = 0.0
    num_train_examples: Optional[int] = None
    seed: int = 0

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
        if self.seed < 0:
            raise ValueError(f"DataConfig.seed must be >= 0, got {self.seed}")

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


class Dataset:
    """Train, validation and test arrays with deterministic batch iterators."""

    def __init__(self, info: DatasetInfo, config: DataConfig, splits: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.info = info
        self.config = config
        self._splits = splits
        self.steps_per_epoch = info.num_train // config.batch_size

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
        """Shuffled full batches of one epoch (remainder dropped).

        The order is a pure function of (seed, epoch), so resuming at ``start_step`` replays
        exactly the batches an uninterrupted run would have seen.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step must be in [0, {self.steps_per_epoch}] (steps_per_epoch), got {start_step}")
        order = np.random.default_rng((self.config.seed, _SHUFFLE_STREAM, epoch)).permutation(self.info.num_train)
        return self._train_iterator(order, start_step)

    def _train_iterator(self, order: np.ndarray, start_step: int) -> Iterator[dict]:
        images, labels = self._splits["train"]
        size = self.config.batch_size
        for step in range(start_step, self.steps_per_epoch):
            index = order[step * size:(step + 1) * size]
            yield {"image": _to_float(images[index]), "label": labels[index]}

    def eval_batches(self, split: str) -> Iterator[dict]:
        """Every example of ``split`` once, in a fixed order, in batches of one shape.

        The last batch is padded with zero images and marked by ``"mask"`` (0 for padding).
        """
        if split not in EVAL_SPLITS:
            raise ValueError(f"eval split must be one of {EVAL_SPLITS}, got {split!r}")
        if split == "validation" and self.info.num_validation == 0:
            raise ValueError("this dataset has no validation split; set DataConfig.validation_fraction > 0")
        return self._eval_iterator(*self._splits[split])

    def train_class_counts(self) -> np.ndarray:
        """Examples of each class in the train split, int64 (num_classes,): for class weights."""
        return np.bincount(self._splits["train"][1], minlength=self.info.num_classes)

    def _eval_iterator(self, images: np.ndarray, labels: np.ndarray) -> Iterator[dict]:
        size = self.config.resolved_eval_batch_size
        for start in range(0, len(labels), size):
            image, label = _to_float(images[start:start + size]), labels[start:start + size]
            pad = size - len(label)
            yield {
                "image": np.pad(image, ((0, pad), (0, 0), (0, 0), (0, 0))),
                "label": np.pad(label, (0, pad)),
                "mask": np.pad(np.ones(len(label), np.float32), (0, pad)),
            }


def _hold_out(num: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices 0..num-1 at random into (kept, held out); both sorted, held out has round(fraction*num)."""
    order = rng.permutation(num)
    held = int(round(fraction * num))
    return np.sort(order[held:]), np.sort(order[:held])


def _take(arrays: tuple[np.ndarray, np.ndarray], index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return arrays[0][index], arrays[1][index]


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
    if test is None:
        kept, held = _hold_out(len(train[1]), TEST_FRACTION, np.random.default_rng((_TEST_SPLIT_SEED, _TEST_STREAM)))
        train, test = _take(train, kept), _take(train, held)
    else:
        test = (np.asarray(test[0]), np.asarray(test[1]).astype(np.int32))
        _check_arrays("test", *test, len(class_names))
        if test[0].shape[1:] != train[0].shape[1:]:
            raise ValueError(f"test images have shape {test[0].shape[1:]} but train images {train[0].shape[1:]}")
    rng = np.random.default_rng((config.seed, _HOLDOUT_STREAM))
    kept, held = _hold_out(len(train[1]), config.validation_fraction, rng)
    train, validation = _take(train, kept), _take(train, held)
    if config.num_train_examples is not None:
        if config.num_train_examples > len(train[1]):
            raise ValueError(f"num_train_examples={config.num_train_examples} exceeds the {len(train[1])} "
                             f"train examples left after the validation hold-out; lower it or set it to None")
        train = _take(train, np.sort(rng.permutation(len(train[1]))[:config.num_train_examples]))
    if len(train[1]) < config.batch_size:
        raise ValueError(f"batch_size={config.batch_size} exceeds the {len(train[1])} train examples; "
                         f"lower batch_size so an epoch has at least one step")
    info = DatasetInfo(
        name=config.dataset, num_classes=len(class_names), class_names=class_names,
        image_shape=tuple(int(s) for s in train[0].shape[1:]),
        num_train=len(train[1]), num_validation=len(validation[1]), num_test=len(test[1]))
    return Dataset(info, config, {"train": train, "validation": validation, "test": test})


def is_folder_path(dataset: str) -> bool:
    """Whether ``dataset`` names a folder (an existing one, or a path: absolute or starting with "." or "~")
    rather than a tfds name."""
    return os.path.isabs(dataset) or dataset.startswith((".", "~")) or os.path.isdir(dataset)


def load(config: DataConfig) -> Dataset:
    """Reads ``config.dataset`` into host memory and splits it: a tensorflow-datasets name, or a
    folder path (``image_folder.read_image_folder``; ``config.image_size`` required).

    Raises ValueError for a name tfds does not know or a path that is not an image folder, and
    ``DatasetUnavailableError`` when a tfds dataset is not in the data dir and cannot be downloaded.
    """
    if is_folder_path(config.dataset):
        folder = image_folder.read_image_folder(config.dataset, config.image_size)
        dataset = from_arrays(config, folder.class_names, (folder.images, folder.labels))
        dataset.info = dataclasses.replace(dataset.info, num_skipped=len(folder.skipped))
        return dataset
    arrays = tfds_source.read_tfds(config.dataset, config.data_dir, config.image_size)
    if "train" not in arrays.splits:
        raise ValueError(f"dataset {config.dataset!r} has no train split (splits: {sorted(arrays.splits)})")
    test = arrays.splits.get("test", arrays.splits.get("validation"))
    return from_arrays(config, arrays.class_names, arrays.splits["train"], test)
