"""One run at a time in a workdir: a lock file naming the host and process that hold it.

A second run gets an error naming them; a lock left by a dead process of this host is taken over (and the
takeover is logged); a lock from another host is never taken, since its process cannot be seen.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
from typing import Iterator, Optional

from cnn_jax.files import fsync_directory
from cnn_jax.workdir_files import LOCK_FILE

log = logging.getLogger(__name__)


class WorkdirBusy(RuntimeError):
    """Another run holds the workdir's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Someone else's process: alive.
        return True
    return True


def _read_lock(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # Unreadable or half-written: treated as held by an unknown process.


def _create_lock(path: str) -> bool:
    """Creates the lock file for this process; False if it already exists."""
    holder = {"host": socket.gethostname(), "pid": os.getpid(),
              "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(holder, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_directory(os.path.dirname(path))
    return True


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[None]:
    """Holds the lock of ``workdir`` (an existing directory) for the block; WorkdirBusy if another run has it."""
    path = os.path.join(workdir, LOCK_FILE)
    while not _create_lock(path):
        holder = _read_lock(path)
        if holder is None:
            continue  # Released between our two looks: try again.
        host, pid = holder.get("host"), holder.get("pid")
        where = f"process {pid} on host {host} (since {holder.get('since')})"
        if host != socket.gethostname() or not isinstance(pid, int):
            raise WorkdirBusy(
                f"workdir {workdir} is locked by {where}. If that run is over, delete {path} and rerun; "
                f"otherwise wait for it or use another --workdir")
        if _alive(pid):
            raise WorkdirBusy(f"workdir {workdir} is in use by {where}: wait for it to finish, stop it, "
                              f"or use another --workdir")
        log.warning("taking over the lock of %s, which is no longer running", where)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    try:
        yield
    finally:
        holder = _read_lock(path)
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            os.remove(path)
