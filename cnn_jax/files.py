"""Durable file writes: a file or directory is either its old content or its new one, also after a power cut.

Each write goes to a temporary sibling named after this process (so two writers never share one),
is fsynced, renamed over the target, and the directory is fsynced so the rename itself is on disk.
A directory (an export) is staged whole beside its target (`staging_path`, `fsync_tree`) and
swapped in by renames (`swap_in`). `read_json` reads a small JSON record back, with one-line errors that name
the file. `files_key` names a cache derived from files.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import uuid
from typing import BinaryIO, Callable, Iterable, Union

# What a write takes: text (written as UTF-8), bytes, or a function that writes to the open binary file
# (large data, e.g. ``np.savez``, without a second copy in memory).
Content = Union[str, bytes, Callable[[BinaryIO], None]]
MAX_JSON_BYTES = 1 << 20  # a record (settings, statistics) is a few KiB: a larger file is not one


def fsync_directory(directory: str) -> None:
    """Makes the directory's entries (a rename, a new file) durable."""
    fd = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staging_path(path: str, what: str = "new") -> str:
    """An unused hidden name beside ``path``, e.g. ``.export.new-1234-9f2c``."""
    return os.path.join(os.path.dirname(os.path.abspath(path)),
                        f".{os.path.basename(path)}.{what}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_synced(path: str, content: Content) -> None:
    """Writes ``content`` to ``path`` and fsyncs it (a file inside a staged directory, or a partial file)."""
    with open(path, "wb") as f:
        if callable(content):
            content(f)
        else:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
        f.flush()
        os.fsync(f.fileno())


def fsync_tree(path: str) -> None:
    """fsyncs a file, or every file and directory below ``path``."""
    if not os.path.isdir(path):
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        return
    for directory, _, names in os.walk(path):
        for name in names:
            fsync_tree(os.path.join(directory, name))
        fsync_directory(directory)


def swap_in(staged: str, target: str) -> None:
    """Replaces ``target`` (a file or directory, if any) by ``staged``, a fully written sibling, by renames."""
    old = None
    if os.path.lexists(target):
        old = staging_path(target, "old")
        os.replace(target, old)
    os.replace(staged, target)
    fsync_directory(os.path.dirname(os.path.abspath(target)))
    if old is not None:  # a symbolic link is removed itself, never the tree it points to
        shutil.rmtree(old) if os.path.isdir(old) and not os.path.islink(old) else os.remove(old)


def write_atomically(path: str, content: Content) -> None:
    """Replaces ``path`` with ``content`` in one step; a failed write leaves the old file as it was."""
    partial = staging_path(path, "tmp")
    try:
        write_synced(partial, content)
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    fsync_directory(os.path.dirname(path))


def write_json(path: str, value) -> None:
    """``value`` as indented, key-sorted JSON, written atomically."""
    write_atomically(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_json(path: str, fix: str, max_bytes: int = MAX_JSON_BYTES):
    """The JSON value in ``path``; FileNotFoundError when there is none.

    Raises ValueError, one line naming the file, what is wrong with it and ``fix``, when it is a symbolic link,
    not a regular file (a FIFO is never waited on), larger than ``max_bytes``, not UTF-8, or not JSON (nested too
    deeply included).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symbolic link: {fix}") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{path} is not a regular file: {fix}")
    with os.fdopen(fd, "rb") as f:
        content = f.read(max_bytes + 1)
    if len(content) > max_bytes:
        raise ValueError(f"{path} is larger than {max_bytes} bytes, more than any record it should hold: {fix}")
    try:
        return json.loads(content.decode("utf-8"))
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}): {fix}") from None


def json_excerpt(value, limit: int = 40) -> str:
    """``value`` as JSON on one line, cut to ``limit`` characters: what a message shows of a wrong record."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def files_key(paths: Iterable[str], *extra) -> str:
    """A 32-hex-digit key of ``extra`` and each file's path, size and modification time, naming a cache derived
    from those files: a file added, removed, renamed or rewritten (size or mtime changed) gives another key."""
    key = hashlib.sha256(repr(extra).encode())
    for path in paths:
        stat = os.stat(path)
        key.update(repr((os.fspath(path), stat.st_size, stat.st_mtime_ns)).encode())
    return key.hexdigest()[:32]
