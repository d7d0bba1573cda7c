"""One root for every cache cnn_jax keeps: ``$CNN_JAX_CACHE_DIR``, by default ``~/.cache/cnn_jax``.

Each cache is a subdirectory named by what it holds, so clearing one cache, or all of them, is one ``rm -r``:

=============  ==============================================================
``input/``     decoded tfds datasets and image-folder scans (``cnn_jax.data``)
``jax/``       XLA's persistent compilation cache (``cnn_jax.run.setup_process``)
``onednn/``    the compiled oneDNN convolution library (``cnn_jax.ops.onednn``)
``pretrained/``  converted pretrained weights (``cnn_jax.pretrained``)
=============  ==============================================================

A cache is read back without being recomputed, and one of them is a shared library that every training process
loads, so whoever can write a cache directory can run code in, or change the results of, every later run. Each
cache therefore opens its directory with ``private_dir`` before it reads or writes anything there: the directories
it creates are mode 0700, and it refuses (``UnsafeCacheDirError``) a directory

- that another user owns, or that group or others can write (its mode bits; a POSIX ACL granting another user
  write access shows as the group write bit, so it is refused too);
- below a directory, on the path as given or as resolved through symbolic links, that a user other than this one
  and root owns, or that group or others can write without the sticky bit (as ``/tmp`` has): its owner, or those
  writers, could rename the cache directory away and put their own in its place.

What this does not protect against: this user's own processes and root, which can write the cache anyway (the
SHA-256 sums the caches keep beside their files catch damage and files put there by other means, not them);
files written into a directory while it was writable by others, before a ``chmod`` made it pass; and changes made
after the check (another user cannot make them in a directory that passes).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Union

CACHE_ENV = "CNN_JAX_CACHE_DIR"
KINDS = ("input", "jax", "onednn", "pretrained")
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
_ELSEWHERE = f"set {CACHE_ENV} to a directory of your own"


class UnsafeCacheDirError(OSError):
    """A cache directory another user could write; the message names the directory, the problem and the fix."""


def cache_root() -> Path:
    """``$CNN_JAX_CACHE_DIR``, or ``~/.cache/cnn_jax`` when it is unset or empty."""
    return Path(os.environ.get(CACHE_ENV) or Path("~") / ".cache" / "cnn_jax").expanduser()


def cache_dir(kind: str) -> Path:
    """The directory of one cache, ``cache_root() / kind`` (only a path: ``private_dir`` makes and checks it)."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache {kind!r}: use one of {KINDS}")
    return cache_root() / kind


def private_dir(path: Union[str, os.PathLike]) -> Path:
    """``path`` as an absolute path, made (each missing directory with mode 0700) and checked as the module
    docstring says. Raises UnsafeCacheDirError when the check fails, OSError when it cannot be made."""
    path = Path(path).expanduser().absolute()
    missing = []
    for directory in (path, *path.parents):
        if os.path.lexists(directory):
            break
        missing.append(directory)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:  # made meanwhile by another process: checked below like any other
            pass
    _check(path)
    return path


def _check(path: Path) -> None:
    user = os.geteuid()
    status = os.stat(path)
    if not stat.S_ISDIR(status.st_mode):
        raise UnsafeCacheDirError(f"cache directory {path} is not a directory; fix: remove it, or {_ELSEWHERE}")
    if status.st_uid != user:
        raise UnsafeCacheDirError(f"cache directory {path} belongs to user id {status.st_uid}, not to this user "
                                  f"({user}): what that user puts there would be run or read here; fix: remove it, "
                                  f"or {_ELSEWHERE}")
    if status.st_mode & _OTHERS_WRITE:
        raise UnsafeCacheDirError(f"cache directory {path} can be written by group or others (mode "
                                  f"{stat.S_IMODE(status.st_mode):o}): what they put there would be run or read "
                                  f"here; fix: remove it (or, if you trust what it holds, chmod go-w {path}), or "
                                  f"{_ELSEWHERE}")
    for above in sorted(set(path.parents) | set(Path(os.path.realpath(path)).parents)):
        status = os.stat(above)
        if status.st_uid not in (user, 0):
            who = f"belongs to user id {status.st_uid}, who"
        elif status.st_mode & _OTHERS_WRITE and not status.st_mode & stat.S_ISVTX:
            who = f"can be written by group or others (mode {stat.S_IMODE(status.st_mode):o}, no sticky bit), who"
        else:
            continue
        raise UnsafeCacheDirError(f"{above}, above the cache directory {path}, {who} could put a directory of their "
                                  f"own in the cache's place; fix: {_ELSEWHERE}, below directories that only you "
                                  "(or root) can change")
