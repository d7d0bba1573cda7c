"""Image files as classification data: a folder with one subfolder per class, or single files for inference.

The layout is torchvision's ``ImageFolder`` and Keras' ``image_dataset_from_directory``: ``root/<class>/<file>``,
class names are the subfolder names in sorted order, and every file below a class folder (at any depth) is an
example of that class. Names starting with "." (``.DS_Store``, ``.ipynb_checkpoints``) are not data and are
passed over. Files are decoded by TensorFlow (JPEG, PNG, GIF (first frame), BMP, WebP) and resized exactly as the
tfds reader resizes: the aspect ratio kept, scaled to cover the size, the centre cropped. A file that does not
decode (corrupt, truncated, not an image) is skipped and counted, never fatal.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Optional, Sequence

import numpy as np

from cnn_jax.data import tfds_source
from cnn_jax.files import files_key, write_atomically

log = logging.getLogger(__name__)

FORMATS = "JPEG, PNG, GIF, BMP or WebP"
_DECODE_BATCH = 256
_SHOWN_SKIPPED = 3  # skipped files named in the log line
_TF_NOISE = re.compile(r"\{\{[^}]*\}\}|\[Op:[^\]]*\].*", re.DOTALL)  # op names around TF's error message


class UnreadableImageError(ValueError):
    """A file is missing, unreadable or not an image TensorFlow can decode; ``reason`` says which."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """The decoded contents of a class-per-subfolder image folder."""
    class_names: tuple[str, ...]
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int32 (N,), indices into class_names
    skipped: tuple[str, ...]  # paths of the files that did not decode


def _visible(names) -> list[str]:
    return sorted(name for name in names if not name.startswith("."))


def _check_utf8(name: str, root: str) -> str:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"class folder {os.fsencode(name)!r} in {root} is not valid UTF-8, and class names go into "
                         "results and exports as text: rename the folder") from None
    return name


def tf_paths(paths) -> np.ndarray:
    """File paths as the bytes the OS names them by, so that TensorFlow opens names that are not UTF-8 too."""
    return np.asarray([os.fsencode(p) for p in paths], dtype=object)


MAX_PIXELS = 64 << 20  # 64 MPixel (8192x8192): a larger image is refused before decoding, as a decompression bomb


def _pixel_problem(path: str) -> Optional[str]:
    """Why ``path`` must not be decoded (its header claims more than MAX_PIXELS), or None.

    Reads only the header (Pillow opens lazily): a few KB of PNG can claim gigapixels of zeros.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 -- not for Pillow to judge: TensorFlow's decode reports unreadable files
        return None
    if width * height > MAX_PIXELS:
        return f"its header claims {width}x{height} pixels, over the {MAX_PIXELS:,}-pixel limit (a decompression bomb?)"
    return None


def _class_files(root: str) -> tuple[tuple[str, ...], list[str], list[int]]:
    """Class names, and every file path below the class folders with its class index, in a fixed order."""
    class_names = tuple(_check_utf8(name, root) for name in _visible(os.listdir(root))
                        if os.path.isdir(os.path.join(root, name)))
    if len(class_names) < 2:
        raise ValueError(f"image folder {root} has {len(class_names)} class subfolder(s) {list(class_names)}; "
                         "a classifier needs at least 2: put each class's images in a subfolder named after it "
                         "(root/daisy/1.jpg, root/tulips/2.jpg, ...)")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        for directory, subdirectories, files in os.walk(os.path.join(root, name)):
            subdirectories[:] = _visible(subdirectories)
            for file in _visible(files):
                paths.append(os.path.join(directory, file))
                labels.append(label)
    return class_names, paths, labels


def _decode(tf, contents, image_size: tuple[int, int], channels: int):
    image = tf.io.decode_image(contents, channels=channels, expand_animations=False)
    return tfds_source.cover_and_center_crop(tf, image, image_size)  # the same resize as tfds data


def _check_size(image_size, where: str) -> tuple[int, int]:
    if image_size is None:
        raise ValueError(f"{where} holds images of any size: set image_size=(height, width) to resize them "
                         "(experiments: --image_size)")
    return tuple(int(s) for s in image_size)


def list_image_folder(root: str) -> tuple[str, tuple[str, ...], list[str], list[int]]:
    """The expanded root, class names, and every file below the class folders with its class index (fixed order).

    Raises ValueError when ``root`` is not a folder, has fewer than two class subfolders or no file below them.
    """
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
        raise ValueError(f"image folder {root} does not exist or is not a folder")
    class_names, paths, labels = _class_files(root)
    if not paths:
        raise ValueError(f"image folder {root} holds no files below its class folders {list(class_names)}")
    return root, class_names, paths, labels


def _decoded_in_order(paths, image_size, channels, keep_pixels: bool):
    """tf.data's parallel decode of ``paths`` (failures dropped), batched: (images or sizes, indices) chunks."""
    tf, _ = tfds_source.import_tfds()  # TF kept off the GPU, as for tfds data

    def decode(path, index):
        image = _decode(tf, tf.io.read_file(path), image_size, channels)
        return (image if keep_pixels else tf.reduce_max(image)), index  # a value that needs the decode

    within = [i for i, path in enumerate(paths) if _pixel_problem(path) is None]  # bombs count as unreadable
    if not within:
        return iter(())
    files = tf.data.Dataset.from_tensor_slices((tf_paths([paths[i] for i in within]), np.asarray(within, np.int64)))
    decoded = files.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    return decoded.batch(_DECODE_BATCH).as_numpy_iterator()


def _report_skipped(root, class_names, paths, labels, read) -> tuple[tuple[str, ...], np.ndarray]:
    """Logs the files that did not decode and the classes left empty; returns the skipped paths and kept labels."""
    if not len(read):
        raise ValueError(f"image folder {root} holds no readable {FORMATS} image "
                         f"({len(paths)} files below its class folders {list(class_names)})")
    skipped = tuple(np.delete(np.asarray(paths, dtype=object), read).tolist())
    if skipped:
        log.warning("skipped %d of %d files in %s that are not readable %s images (e.g. %s)", len(skipped),
                    len(paths), root, FORMATS, ", ".join(skipped[:_SHOWN_SKIPPED]))
    labels = np.asarray(labels, np.int32)[read]
    empty = [name for label, name in enumerate(class_names) if not np.any(labels == label)]
    if empty:
        log.warning("class folder(s) %s in %s hold no readable image: those classes cannot be learned", empty, root)
    return skipped, labels


def read_image_folder(root: str, image_size: tuple[int, int], channels: int = 3) -> ImageFolder:
    """Decodes every image below ``root``'s class subfolders into uint8 (N, H, W, ``channels``) arrays.

    Files are read in parallel with tf.data; the ones that fail to decode are left out, logged with a count and
    listed in ``ImageFolder.skipped``. Raises ValueError when ``root`` is not a folder, has fewer than two class
    subfolders, or holds no readable image.
    """
    image_size = _check_size(image_size, f"image folder {root}")
    root, class_names, paths, labels = list_image_folder(root)
    chunks = list(_decoded_in_order(paths, image_size, channels, keep_pixels=True))
    images, read = (np.concatenate(column) for column in zip(*chunks)) if chunks else (None, np.zeros(0, int))
    skipped, labels = _report_skipped(root, class_names, paths, labels, read)
    return ImageFolder(class_names, images, labels, skipped)


def scan_image_folder(root: str, image_size: tuple[int, int], channels: int = 3, cache_dir: Optional[str] = None):
    """Which files of ``root`` decode, without keeping any pixels: (class names, readable paths, their labels,
    skipped paths), the same files and labels ``read_image_folder`` keeps.

    Every file is decoded and resized once (tf.data, in parallel); the outcome is cached in ``cache_dir`` (default
    ``tfds_source.input_cache_dir()``, ``~/.cache/cnn_jax/input``) under a key of every path, size and modification time, so a resumed run skips it.
    """
    root, class_names, paths, labels = list_image_folder(root)
    image_size = _check_size(image_size, f"image folder {root}")
    key = files_key(paths, image_size, channels)
    cache = os.path.join(cache_dir or tfds_source.input_cache_dir(), f"folder-{key}.npy")
    try:
        read = np.load(cache)
        log.info("readable files of %s from the cache %s", root, cache)
    except (OSError, ValueError):
        chunks = [index for _, index in _decoded_in_order(paths, image_size, channels, keep_pixels=False)]
        read = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
        try:
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            write_atomically(cache, lambda f: np.save(f, read))
            log.info("checked that the %d files of %s decode; cached in %s", len(paths), root, cache)
        except OSError as error:
            log.info("checked that the %d files of %s decode (not cached: %s)", len(paths), root, error)
    skipped, labels = _report_skipped(root, class_names, paths, labels, read)
    return class_names, [paths[i] for i in read], labels, skipped


def decode_file(tf, path, image_size: tuple[int, int], channels: int = 3):
    """The TF ops that read and decode one file as ``read_image_folder`` does (for tf.data pipelines)."""
    return _decode(tf, tf.io.read_file(path), image_size, channels)


def read_image(path: str, image_size: Sequence[int], channels: int = 3) -> np.ndarray:
    """One image file as uint8 (H, W, ``channels``), resized as ``read_image_folder`` resizes.

    Raises UnreadableImageError naming the file and the reason when it is missing or does not decode.
    """
    tf, _ = tfds_source.import_tfds()
    image_size = _check_size(image_size, "read_image")
    problem = _pixel_problem(path)
    if problem:
        raise UnreadableImageError(path, problem)
    try:
        return _decode(tf, tf.io.read_file(os.fsencode(path)), image_size, channels).numpy()
    except (tf.errors.OpError, ValueError) as error:
        reason = _TF_NOISE.sub("", getattr(error, "message", str(error))).strip()
        raise UnreadableImageError(path, f"not a readable {FORMATS} image ({reason})") from None
