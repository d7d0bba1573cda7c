"""One run at a time in a workdir: a kernel lock (``flock``) on its ``.lock`` file, held while the run lives.

The lock is the kernel's: ``fcntl.flock`` on the open file, which the kernel releases when the holder's last
descriptor closes, however it ends (a normal exit, an exception, SIGTERM while decoding or compiling, kill -9,
a container restart). So a dead run never blocks its rerun, and two starts that race see one winner: there is
no stale lock to judge and nothing to take over. The JSON inside (host, pid, start time) is only for the
messages: a start that finds the lock held names its holder; a file left by a run that died is rewritten by
the next holder (and the takeover logged), whatever it holds: a dead or reused pid, our own pid, or nothing
readable (a 0-byte file left by a full disk).

The file is opened with ``O_NOFOLLOW``: a ``.lock`` symlink planted in the workdir is refused
(`cnn_jax.workdir_files.PlantedSymlink`), never written through. Programs the run executes do not inherit it
(a forked child that outlives the run would hold the lock until it exits). A holder deletes the file when it
releases; a start that locked a file deleted meanwhile (its inode no longer the path's) tries again.

Across hosts: on a local filesystem the lock is exact. On NFS (Linux clients, ``local_lock=none``, the default)
``flock`` is sent to the server as a whole-file lock, so runs on two hosts exclude each other too, and a
crashed host's lock is released when the server's lease on it expires (NFSv4: about 90 s), not at once.
A mount with ``nolock`` or ``local_lock=flock|all``, and filesystems without shared locks, keep the lock on
each host: there a run on another host is invisible to it. That is why a lock file naming another host is
never taken over, even when the kernel grants the lock: this host cannot tell a finished run from one whose
lock it does not see; the message names the file to delete once that run is known to be over.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import time
from typing import Iterator, Optional

from cnn_jax.files import fsync_directory
from cnn_jax.workdir_files import LOCK_FILE, entry_path

log = logging.getLogger(__name__)

HOLDER_WAIT_S = 2.0  # how long a refused start waits for the winner of a race to write its name
_MAX_HOLDER_BYTES = 4096  # a holder record is ~100 bytes: anything longer is not one
_HELD: set[tuple[int, int]] = set()  # (device, inode) of the lock files this process holds


class WorkdirBusy(RuntimeError):
    """Another run holds the workdir's lock, or its lock file names a run on another host."""


def _holder(fd: int) -> Optional[dict]:
    """The holder record in the open lock file, or None when it holds none (empty, cut short, garbled, or with
    fields that are not one line of text and a pid)."""
    try:
        holder = json.loads(os.pread(fd, _MAX_HOLDER_BYTES, 0))
    except (OSError, ValueError, RecursionError):
        return None
    if not (isinstance(holder, dict) and isinstance(holder.get("pid"), int) and isinstance(holder.get("host"), str)
            and all(isinstance(holder.get(key, ""), str) and holder.get(key, "").isprintable()
                    for key in ("host", "since"))):
        return None
    return holder


def _describe(holder: dict) -> str:
    since = f" (since {holder['since']})" if holder.get("since") else ""
    return f"process {holder['pid']} on host {holder['host']}{since}"


def _open(workdir: str) -> int:
    """The lock file, opened (created if absent) without following a symbolic link (PlantedSymlink)."""
    path = entry_path(workdir, LOCK_FILE)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:  # a link planted since the check
            entry_path(workdir, LOCK_FILE)
        raise


def _identity(fd: int) -> tuple[int, int]:
    stat = os.fstat(fd)
    return stat.st_dev, stat.st_ino


def _is_current(fd: int, path: str) -> bool:
    """Whether ``fd`` is still the file at ``path`` (a releasing holder deletes it)."""
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == _identity(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _refusal(workdir: str, path: str, fd: int) -> WorkdirBusy:
    """The error for a start that found the lock held, naming the holder once it has written its name.

    Until then the file may still name the run it took over (a dead process of this host, or this one after a
    PID reuse): such a name is not the holder's, and is waited past."""
    deadline = time.monotonic() + HOLDER_WAIT_S
    while True:
        holder = _holder(fd)
        if holder and (holder["host"] != socket.gethostname() or _alive(holder["pid"]) and (
                holder["pid"] != os.getpid() or _identity(fd) in _HELD)):
            who = _describe(holder)
            break
        if time.monotonic() >= deadline:
            who = f"a process that has not written its name into {path}"
            break
        time.sleep(0.02)
    return WorkdirBusy(f"workdir {workdir} is in use by {who}: wait for it to finish, stop it, or use another "
                       "--workdir")


def _acquire(workdir: str, path: str) -> int:
    """The descriptor of the locked lock file; WorkdirBusy when another run holds it."""
    while True:
        fd = _open(workdir)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = _refusal(workdir, path, fd)
            os.close(fd)
            raise error from None
        except BaseException:
            os.close(fd)
            raise
        if _is_current(fd, path):
            return fd
        os.close(fd)  # locked a file its holder deleted as it released: lock the current one


def _take(workdir: str, path: str, fd: int) -> None:
    """Writes this process into the locked file, after checking what an earlier run left there."""
    size = os.fstat(fd).st_size
    if size:
        holder = _holder(fd)
        if holder is None:
            log.warning("the lock file %s names no run (%d bytes that are no holder record, e.g. cut short on a full "
                        "disk); the run that wrote it has ended: taking the workdir over", path, size)
        elif holder["host"] != socket.gethostname():
            raise WorkdirBusy(f"workdir {workdir} is locked by {_describe(holder)}, which this host cannot see. If "
                              f"that run is over, delete {path} and rerun; otherwise wait for it or use another "
                              "--workdir")
        else:
            log.warning("taking over the lock of %s, which is no longer running", _describe(holder))
    record = {"host": socket.gethostname(), "pid": os.getpid(),
              "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)
    fsync_directory(workdir)


def _release(path: str, fd: int) -> None:
    """Deletes the lock file while still holding it (so no start can lock it after), then unlocks it."""
    try:
        if _is_current(fd, path):
            os.remove(path)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[None]:
    """Holds the lock of ``workdir`` (an existing directory) for the block.

    Raises WorkdirBusy, naming the holder, when another run holds it or its lock file names a run on another
    host; OSError when the lock file cannot be written (its message names the file).
    """
    path = os.path.join(workdir, LOCK_FILE)
    fd = _acquire(workdir, path)
    try:
        _take(workdir, path, fd)
    except BaseException:
        os.close(fd)  # the file stays as it was found, for the next start to judge
        raise
    held = _identity(fd)
    _HELD.add(held)
    try:
        yield
    finally:
        _HELD.discard(held)
        _release(path, fd)
