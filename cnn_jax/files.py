"""Durable file writes: a file is either its old content or its new one, also after a power cut.

Each write goes to a temporary file named after this process (so two writers never share one),
is fsynced, renamed over the target, and the directory is fsynced so the rename itself is on disk.
"""
from __future__ import annotations

import json
import os
import uuid
from typing import Union


def fsync_directory(directory: str) -> None:
    """Makes the directory's entries (a rename, a new file) durable."""
    fd = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, content: Union[str, bytes]) -> None:
    """Replaces ``path`` with ``content`` in one step; a failed write leaves the old file as it was."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    partial = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    fsync_directory(os.path.dirname(path))


def write_json(path: str, value) -> None:
    """``value`` as indented, key-sorted JSON, written atomically."""
    write_atomically(path, json.dumps(value, indent=2, sort_keys=True) + "\n")
