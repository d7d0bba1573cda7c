"""A run's claim on its workdir: one run at a time (a lock), and the settings it was started with.

The first start that trains records its settings in ``flags.json``; a later start in the same workdir must
bring the same result-changing settings (its identity) or it is refused before anything in the
workdir changes. A setting that an older record lacks is read as the value that reproduces the
old behaviour (``absent``). The lock is a file naming the host and process that hold it: a second
run gets an error naming them; a lock left by a dead process of this host is taken over (and the
takeover is logged); a lock from another host is never taken, since its process cannot be seen.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
from typing import Any, Iterator, Mapping, Optional

from cnn_jax.files import fsync_directory, write_json

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
SETTINGS_FILE = "flags.json"
EXTENDED_KEY = "extended_from_epochs"


class WorkdirBusy(RuntimeError):
    """Another run holds the workdir's lock."""


class SettingsChanged(ValueError):
    """The workdir holds a run started with other result-changing settings."""


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
    """Holds ``workdir``'s lock for the block (creating the workdir); WorkdirBusy if another run has it."""
    make_workdir(workdir)
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


def make_workdir(workdir: str) -> None:
    """Creates ``workdir``, with an error that names the problem when it cannot be a directory."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(errno.ENOTDIR, "--workdir is a file, not a directory: choose another path",
                                 workdir)
    os.makedirs(workdir, exist_ok=True)
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "--workdir is not writable: fix its permissions or choose "
                              "another path", workdir)


def read_settings(workdir: str) -> Optional[dict]:
    """The settings recorded at the workdir's first start, or None for a new workdir."""
    path = os.path.join(workdir, SETTINGS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise SettingsChanged(f"{path} is not valid JSON ({error}): the run's record is damaged; restore it "
                              f"or use another --workdir") from None


def check_settings(workdir: str, record: Mapping[str, Any], identity: Mapping[str, Any],
                   absent: Mapping[str, Any], *, extend_epochs: bool = False) -> dict:
    """Checks ``identity`` against the workdir's recorded settings; returns the record to keep.

    ``record`` is every setting of this start, ``identity`` those that change the result, and
    ``absent`` what a setting missing from an older record means. With ``extend_epochs`` a larger
    ``epochs`` is accepted (the finished run trains on) and noted in the record. Raises
    SettingsChanged listing every difference, before anything is written.
    """
    before = read_settings(workdir)
    now = json.loads(json.dumps(dict(record)))
    if before is None:
        return now
    identity = json.loads(json.dumps(dict(identity)))
    differences = []
    for name, value in identity.items():
        old = before.get(name, absent.get(name))
        if old == value:
            continue
        if (name == "epochs" and extend_epochs and isinstance(old, int) and isinstance(value, int)
                and value > old):
            now[EXTENDED_KEY] = [*before.get(EXTENDED_KEY, []), old]
            continue
        differences.append(f"{name}: {old!r} then, {value!r} now")
    if differences:
        epochs_only = all(d.startswith("epochs:") for d in differences)
        raise SettingsChanged(
            f"workdir {workdir} holds a run started with other settings ({'; '.join(differences)}). Fix: use "
            f"a new --workdir, or rerun with the settings it was started with"
            + ("; to train a finished run for more epochs, add --extend_epochs" if epochs_only else ""))
    if EXTENDED_KEY in before and EXTENDED_KEY not in now:
        now[EXTENDED_KEY] = before[EXTENDED_KEY]
    return now


@contextlib.contextmanager
def claim(workdir: str, record: Mapping[str, Any], identity: Mapping[str, Any],
          absent: Mapping[str, Any], *, extend_epochs: bool = False, chief: bool = True) -> Iterator[dict]:
    """Locks ``workdir`` (process 0 only), checks the settings, and yields the record to keep.

    Nothing is written: the caller records the settings with ``write_settings`` once the run is
    about to train, so that a start that fails earlier (a misspelt dataset) leaves no record that
    would refuse its corrected rerun. Processes other than the chief share the chief's lock.
    """
    lock = locked(workdir) if chief else contextlib.nullcontext()
    with lock:
        yield check_settings(workdir, record, identity, absent, extend_epochs=extend_epochs)


def write_settings(workdir: str, record: Mapping[str, Any]) -> None:
    """Records ``record`` (from ``claim``) as the workdir's settings, unless it holds exactly them already."""
    if dict(record) != read_settings(workdir):
        write_json(os.path.join(workdir, SETTINGS_FILE), dict(record))
