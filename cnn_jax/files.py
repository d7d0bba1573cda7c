"""Durable file writes: a file or directory is either its old content or its new one, also after a power cut.

Each write goes to a temporary sibling named after this process (so two writers never share one),
is fsynced, renamed over the target, and the directory is fsynced so the rename itself is on disk.
A directory (an export) is staged whole beside its target (`staging_path`, `fsync_tree`) and
swapped in by renames (`swap_in`). `files_key` names a cache derived from files.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from typing import BinaryIO, Callable, Iterable, Union

# What a write takes: text (written as UTF-8), bytes, or a function that writes to the open binary file
# (large data, e.g. ``np.savez``, without a second copy in memory).
Content = Union[str, bytes, Callable[[BinaryIO], None]]


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
    if old is not None:
        shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)


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


def files_key(paths: Iterable[str], *extra) -> str:
    """A 32-hex-digit key of ``extra`` and each file's path, size and modification time, naming a cache derived
    from those files: a file added, removed, renamed or rewritten (size or mtime changed) gives another key."""
    key = hashlib.sha256(repr(extra).encode())
    for path in paths:
        stat = os.stat(path)
        key.update(repr((os.fspath(path), stat.st_size, stat.st_mtime_ns)).encode())
    return key.hexdigest()[:32]
