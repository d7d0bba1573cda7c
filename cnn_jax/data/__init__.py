"""Datasets held in host memory, numpy batching, device prefetch and on-device augmentation.

``load(DataConfig(...))`` reads a tensorflow-datasets dataset or an image folder (one subfolder per
class) once into uint8 arrays; the
returned ``Dataset`` yields numpy batches (order a pure function of seed and epoch);
``prefetch_to_device`` moves them ahead of the step; ``make_augment`` builds a jittable
augmentation applied inside the train step.
"""
from cnn_jax.data.augment import AUGMENTATIONS, cutout, make_augment, random_crop, random_flip
from cnn_jax.data.dataset import (
    EVAL_SPLITS, TEST_FRACTION, DataConfig, Dataset, DatasetInfo, from_arrays, is_folder_path, load)
from cnn_jax.data.image_folder import ImageFolder, UnreadableImageError, read_image, read_image_folder
from cnn_jax.data.prefetch import prefetch_to_device
from cnn_jax.data.tfds_source import TESTED_DATASETS, DatasetUnavailableError

__all__ = [
    "AUGMENTATIONS", "EVAL_SPLITS", "TESTED_DATASETS", "TEST_FRACTION", "DataConfig", "Dataset", "DatasetInfo",
    "DatasetUnavailableError", "ImageFolder", "UnreadableImageError", "cutout", "from_arrays", "is_folder_path",
    "load", "make_augment", "prefetch_to_device", "random_crop", "random_flip", "read_image", "read_image_folder",
]
