"""Datasets held in host memory or streamed from disk, numpy batching, device prefetch and on-device augmentation.

``load(DataConfig(...))`` reads a tensorflow-datasets dataset or an image folder (one subfolder per class); the
returned ``Dataset`` yields numpy batches (order a pure function of seed and epoch); ``prefetch_to_device`` moves
them ahead of the step; ``make_augment`` builds a jittable augmentation applied inside the train step.
``check_image_file`` and ``read_image`` check and read single files from outside (predict, visualize).

The names below are imported on first access (module ``__getattr__``), so a caller that only reads images
(``read_image``, as the ONNX and TFLite predict runtimes do) imports neither JAX (through ``augment``) nor
tensorflow-datasets: an eager face would cost such a caller the seconds of ``import jax``.
"""
from cnn_jax.lazy import lazy_names

_SOURCES = {
    "augment": ("AUGMENTATIONS", "POLICY_OPS", "AugmentConfig", "build_augment", "cutout", "make_augment",
                "policy_magnitudes", "randaugment", "random_crop", "random_flip", "random_resized_crop",
                "trivialaugment"),
    "dataset": ("EVAL_SPLITS", "TEST_FRACTION", "DataConfig", "Dataset", "DatasetInfo", "from_arrays",
                "is_folder_path", "load", "process_eval_batches", "process_train_batches"),
    "image_files": ("MAX_PIXELS", "UnreadableImageError", "check_image_file", "read_image"),
    "image_folder": ("ImageFolder", "read_image_folder"),
    "prefetch": ("prefetch_to_device",),
    "statistics": ("STATISTICS_IMAGES", "channel_statistics"),
    "tfds_source": ("TESTED_DATASETS", "DatasetUnavailableError"),
}
__all__, __getattr__, __dir__ = lazy_names(__name__, _SOURCES)
