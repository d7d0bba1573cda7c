"""Decoded input kept between runs, in ``cnn_jax.caches.cache_dir("input")``: a tfds dataset's arrays, and which
files of an image folder decode.

A cache file is named by a key of what it was derived from (``cnn_jax.files.files_key``), written atomically, and
its SHA-256 is written beside it (``<file>.sha256``) after it. A read hashes the very bytes it parses (one
mapping of the file), then checks that the contents fit what the caller expects (array shapes, dtypes, label and
index ranges). A missing or different sum, a file that does not parse or contents that do not fit are a miss:
logged, decoded again and rewritten, never a traceback. A write that fails (a full disk, a read-only home) is
logged and skipped.

Before a cache file is read or written, its directory is checked (``caches.private_dir``): this user's, written
by no one else, and not replaceable through a directory above it. A directory that fails is a miss, with one
warning that names the problem and the fix, and nothing is written there.

What the sum catches: a file cut short or damaged, or put in the cache by anything but this module (a planted
file, one copied from elsewhere). What it does not: whoever can write the cache directory can write a sum too;
the directory check keeps other users out, leaving this user and root (see ``cnn_jax.caches``). The contents
checks still keep any file that passes from indexing out of range.
"""
from __future__ import annotations

import hashlib
import logging
import mmap
import os
import zipfile
from typing import BinaryIO, Callable, Optional, TypeVar

import numpy as np

from cnn_jax.caches import UnsafeCacheDirError, cache_dir, private_dir
from cnn_jax.files import write_atomically

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what a cache file holds changes (it is part of every key)
SUM_SUFFIX = ".sha256"
_SUM_CHARS = 80  # a sum file holds 64 hex digits and a newline: more is not one, and is not read
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)
T = TypeVar("T")


def cache_path(name: str) -> str:
    """The path of cache file ``name`` in the input cache."""
    return os.path.join(cache_dir("input"), name)


class _Mapping(mmap.mmap):
    """A file mapped read-only, read as a seekable file (``np.load`` and ``zipfile`` read it in place)."""

    def seekable(self) -> bool:
        return True


def _load_verified(path: str, parse: Callable[[BinaryIO], T]) -> tuple[Optional[T], str]:
    """(``parse`` of the file's bytes, "") when its directory passes ``private_dir`` and the file and its sum are
    there and agree, else (None, why not)."""
    try:
        private_dir(os.path.dirname(path))
    except UnsafeCacheDirError as error:
        return None, str(error)
    except OSError:  # the directory cannot be made (a read-only home): nothing is cached there
        return None, "absent"
    try:
        with open(path + SUM_SUFFIX, encoding="ascii") as file:
            expected = file.read(_SUM_CHARS).strip()
        with open(path, "rb") as file, _Mapping(file.fileno(), 0, access=mmap.ACCESS_READ) as contents:
            if hashlib.sha256(contents).hexdigest() != expected:
                return None, "its SHA-256 differs from the one written beside it"
            return parse(contents), ""
    except FileNotFoundError:
        return None, "absent"
    except _UNREADABLE as error:
        return None, f"unreadable ({type(error).__name__}: {error})"


def _save_verified(path: str, write: Callable[[BinaryIO], None]) -> bool:
    """Writes the file, then its SHA-256 beside it, in a directory that passes ``private_dir``; False (logged) when
    the directory fails or either write fails."""
    try:
        private_dir(os.path.dirname(path))
        write_atomically(path, write)
        with open(path, "rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        write_atomically(path + SUM_SUFFIX, digest + "\n")
    except OSError as error:
        log.info("not cached (%s)", error)
        return False
    return True


def _miss(path: str, why: str, what: str) -> None:
    if why != "absent":
        log.warning("ignoring the cache %s: %s; %s again", path, why, what)


def load_arrays(path: str, class_names: tuple[str, ...],
                counts: dict[str, int]) -> Optional[dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A dataset's {split: (uint8 images (N, H, W, C), int32 labels (N,))} cached at ``path``, or None (a miss)
    unless they are this dataset's: its class names, ``counts`` examples per split, labels in range."""
    def parse(contents):
        with np.load(contents, allow_pickle=False) as cached:
            return (tuple(str(n) for n in cached["class_names"]),
                    {split: (cached[f"{split}/images"], cached[f"{split}/labels"]) for split in counts})

    cached, why = _load_verified(path, parse)
    if cached is not None:
        cached_names, splits = cached
        fits = cached_names == class_names and all(
            images.dtype == np.uint8 and images.ndim == 4 and labels.dtype == np.int32 and labels.ndim == 1
            and len(images) == len(labels) == counts[split]
            and (not len(labels) or 0 <= labels.min() <= labels.max() < len(class_names))
            for split, (images, labels) in splits.items())
        if fits:
            return splits
        why = "it does not match the dataset"
    _miss(path, why, "decoding the dataset")
    return None


def save_arrays(path: str, class_names: tuple[str, ...], splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Caches a dataset's class names and {split: (images, labels)} at ``path``."""
    contents = {"class_names": np.asarray(class_names, str)}
    for split, (images, labels) in splits.items():
        contents.update({f"{split}/images": images, f"{split}/labels": labels})
    if _save_verified(path, lambda f: np.savez(f, **contents)):
        log.info("cached the decoded dataset in %s", path)


def load_indices(path: str, count: int) -> Optional[np.ndarray]:
    """The sorted, distinct int64 indices into ``count`` items cached at ``path``, or None (a miss)."""
    indices, why = _load_verified(path, lambda contents: np.load(contents, allow_pickle=False))
    if indices is not None:
        if (indices.dtype == np.int64 and indices.ndim == 1
                and (not len(indices) or (indices[0] >= 0 and indices[-1] < count and np.all(np.diff(indices) > 0)))):
            return indices
        why = f"it does not hold sorted indices below {count}"
    _miss(path, why, "scanning the folder")
    return None


def save_indices(path: str, indices: np.ndarray) -> None:
    """Caches an int64 index array at ``path``."""
    if _save_verified(path, lambda f: np.save(f, np.asarray(indices, np.int64))):
        log.info("cached in %s", path)
