"""A folder of image files as classification data: one subfolder per class.

The layout is torchvision's ``ImageFolder`` and Keras' ``image_dataset_from_directory``: ``root/<class>/<file>``,
class names are the subfolder names in sorted order, and every file below a class folder (at any depth) is an
example of that class. Names starting with "." (``.DS_Store``, ``.ipynb_checkpoints``) are not data and are
passed over.

Symbolic links, one rule wherever they are (a class folder, a folder inside a class, a file): a link is followed
when it leads inside the image folder (its real path), and each folder is read once, so a link back to a folder
read already (a loop) is not followed again. A link that leads outside the folder, or to nothing, is not followed.
Each entry not followed is skipped and counted with the files that do not decode, and logged with why; a folder
from elsewhere could otherwise point at any file on this machine and make it training data.

Each file is checked from its header (``image_files.check_image_file``: a decompression bomb or a file
Pillow cannot read is refused before anything decodes it), then decoded by TensorFlow (JPEG, PNG, GIF (first
frame), BMP, WebP) and resized exactly as the tfds reader resizes: the aspect ratio kept, scaled to cover the
size, the centre cropped. A file refused or that does not decode (corrupt, truncated, not an image) is skipped
and counted, never fatal.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from cnn_jax.data import decode_cache
from cnn_jax.data.image_files import FORMATS, check_image_size, decode_file, image_problem, tf_paths
from cnn_jax.files import files_key
from cnn_jax.tf_images import import_tensorflow

log = logging.getLogger(__name__)

_DECODE_BATCH = 256
_SHOWN_SKIPPED = 3  # skipped files named in the log line


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """The decoded contents of a class-per-subfolder image folder."""
    class_names: tuple[str, ...]
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int32 (N,), indices into class_names
    skipped: tuple[str, ...]  # paths of the files that did not decode, then of the entries passed over


def _visible(names) -> list[str]:
    return sorted(name for name in names if not name.startswith("."))


def _check_utf8(name: str, root: str) -> str:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"class folder {os.fsencode(name)!r} in {root} is not valid UTF-8, and class names go into "
                         "results and exports as text: rename the folder") from None
    return name


class _Walk:
    """The entries below an image folder, by the links rule of the module docstring: ``passed_over`` collects
    (path, why) for each link or folder not followed."""

    def __init__(self, root: str):
        self.real_root = os.path.realpath(root)
        self.seen = {self._identity(root)}  # folders read, by (device, inode): a link back to one is not followed
        self.passed_over: list[tuple[str, str]] = []

    @staticmethod
    def _identity(directory: str) -> tuple[int, int]:
        status = os.stat(directory)
        return status.st_dev, status.st_ino

    def not_followed(self, link: str) -> bool:
        """Whether the symbolic link ``link`` is broken or leads outside the root (then it is passed over, with
        why)."""
        target = os.path.realpath(link)
        if not os.path.exists(target):
            why = f"a symbolic link to {target}, which does not exist"
        elif os.path.commonpath([self.real_root, target]) != self.real_root:
            why = (f"a symbolic link to {target}, outside the image folder: not followed; fix: copy or move what it "
                   "points to into the folder")
        else:
            return False
        self.passed_over.append((link, why))
        return True

    def entries(self, directory: str) -> tuple[list[str], list[str]]:
        """(files, folders) directly in ``directory``, sorted; hidden names left out, links not followed passed
        over."""
        files, folders = [], []
        try:
            with os.scandir(directory) as scan:
                for entry in sorted((e for e in scan if not e.name.startswith(".")), key=lambda e: e.name):
                    if entry.is_symlink() and self.not_followed(entry.path):
                        continue
                    (folders if entry.is_dir() else files).append(entry.path)
        except OSError as error:
            self.passed_over.append((directory, f"a folder that cannot be read ({error.strerror or error})"))
        return files, folders

    def files(self, folder: str):
        """Every file below ``folder``, each folder's files before its subfolders' (sorted), each folder once."""
        pending = [folder]
        while pending:  # a stack, not recursion: a folder nested thousands deep is walked too
            directory = pending.pop()
            try:
                identity = self._identity(directory)
            except OSError as error:
                self.passed_over.append((directory, f"a folder that cannot be read ({error.strerror or error})"))
                continue
            if identity in self.seen:
                self.passed_over.append((directory, "a link to a folder read already (a loop, or a second link to "
                                                    "it): not followed again"))
                continue
            self.seen.add(identity)
            files, folders = self.entries(directory)
            yield from files
            pending.extend(reversed(folders))


def _class_files(root: str) -> tuple[tuple[str, ...], list[str], list[int], list[tuple[str, str]]]:
    """Class names, every file path below the class folders with its class index (in a fixed order), and the
    (path, why) of each entry passed over."""
    walk = _Walk(root)
    class_names = tuple(_check_utf8(os.path.basename(folder), root) for folder in walk.entries(root)[1])
    if len(class_names) < 2:
        raise ValueError(f"image folder {root} has {len(class_names)} class subfolder(s) {list(class_names)}; "
                         "a classifier needs at least 2: put each class's images in a subfolder named after it "
                         "(root/daisy/1.jpg, root/tulips/2.jpg, ...)" + _passed_over_note(walk.passed_over))
    paths, labels = [], []
    for label, name in enumerate(class_names):
        for path in walk.files(os.path.join(root, name)):
            paths.append(path)
            labels.append(label)
    return class_names, paths, labels, walk.passed_over


def _examples(passed_over) -> str:
    return "; ".join(f"{path}: {why}" for path, why in passed_over[:_SHOWN_SKIPPED])


def _passed_over_note(passed_over) -> str:
    return f" ({len(passed_over)} entries passed over, e.g. {_examples(passed_over)})" if passed_over else ""


def _listing(root: str) -> tuple[str, tuple[str, ...], list[str], list[int], list[tuple[str, str]]]:
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
        raise ValueError(f"image folder {root} does not exist or is not a folder")
    class_names, paths, labels, passed_over = _class_files(root)
    if not paths:
        raise ValueError(f"image folder {root} holds no files below its class folders {list(class_names)}"
                         + _passed_over_note(passed_over))
    return root, class_names, paths, labels, passed_over


def list_image_folder(root: str) -> tuple[str, tuple[str, ...], list[str], list[int]]:
    """The expanded root, class names, and every file below the class folders with its class index (fixed order),
    links followed as the module docstring says.

    Raises ValueError when ``root`` is not a folder, has fewer than two class subfolders or no file below them.
    """
    return _listing(root)[:4]


def _checked(paths) -> list[int]:
    """The indices of the files ``check_image_file`` passes; the others are logged with their reasons."""
    problems = {i: problem for i, problem in enumerate(map(image_problem, paths)) if problem}
    if problems:
        log.warning("refused %d files before decoding them: %s", len(problems), "; ".join(
            f"{paths[i]}: {problem}" for i, problem in list(problems.items())[:_SHOWN_SKIPPED]))
    return [i for i in range(len(paths)) if i not in problems]


def _decoded_in_order(paths, image_size, channels, keep_pixels: bool):
    """tf.data's parallel decode of the ``paths`` that pass the check (failures dropped), batched: (images or
    sizes, indices) chunks."""
    within = _checked(paths)
    if not within:
        return iter(())
    tf = import_tensorflow()

    def decode(path, index):
        image = decode_file(tf, path, image_size, channels)
        return (image if keep_pixels else tf.reduce_max(image)), index  # a value that needs the decode

    files = tf.data.Dataset.from_tensor_slices((tf_paths([paths[i] for i in within]), np.asarray(within, np.int64)))
    decoded = files.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    return decoded.batch(_DECODE_BATCH).as_numpy_iterator()


def _report_skipped(root, class_names, paths, labels, read, passed_over) -> tuple[tuple[str, ...], np.ndarray]:
    """Logs the entries passed over, the files that did not decode and the classes left empty; returns the skipped
    paths (both kinds) and the kept labels."""
    if passed_over:
        log.warning("passed over %d entries of %s (e.g. %s)", len(passed_over), root, _examples(passed_over))
    if not len(read):
        raise ValueError(f"image folder {root} holds no readable {FORMATS} image "
                         f"({len(paths)} files below its class folders {list(class_names)})"
                         + _passed_over_note(passed_over))
    undecoded = tuple(np.delete(np.asarray(paths, dtype=object), read).tolist())
    if undecoded:
        log.warning("skipped %d of %d files in %s that are not readable %s images (e.g. %s)", len(undecoded),
                    len(paths), root, FORMATS, ", ".join(undecoded[:_SHOWN_SKIPPED]))
    skipped = undecoded + tuple(path for path, _ in passed_over)
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
    image_size = check_image_size(image_size, f"image folder {root}")
    root, class_names, paths, labels, passed_over = _listing(root)
    chunks = list(_decoded_in_order(paths, image_size, channels, keep_pixels=True))
    images, read = ((np.concatenate(column) for column in zip(*chunks, strict=True)) if chunks
                    else (None, np.zeros(0, int)))
    skipped, labels = _report_skipped(root, class_names, paths, labels, read, passed_over)
    return ImageFolder(class_names, images, labels, skipped)


def scan_image_folder(root: str, image_size: tuple[int, int], channels: int = 3):
    """Which files of ``root`` decode, without keeping any pixels: (class names, readable paths, their labels,
    skipped paths), the same files and labels ``read_image_folder`` keeps.

    Every file is checked, decoded and resized once (tf.data, in parallel); the outcome is cached
    (``decode_cache``) under a key of every path, size and modification time, so a resumed run skips it.
    """
    root, class_names, paths, labels, passed_over = _listing(root)
    image_size = check_image_size(image_size, f"image folder {root}")
    cache = decode_cache.cache_path(f"folder-{files_key(paths, decode_cache.FORMAT, image_size, channels)}.npy")
    read = decode_cache.load_indices(cache, len(paths))
    if read is None:
        chunks = [index for _, index in _decoded_in_order(paths, image_size, channels, keep_pixels=False)]
        read = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
        decode_cache.save_indices(cache, read)
        log.info("checked that the %d files of %s decode", len(paths), root)
    else:
        log.info("readable files of %s from the cache %s", root, cache)
    skipped, labels = _report_skipped(root, class_names, paths, labels, read, passed_over)
    return class_names, [paths[i] for i in read], labels, skipped
