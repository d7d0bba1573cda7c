"""A run's claim on its workdir: the lock (`cnn_jax.run.lock`), and the settings the run was started with.

The first start that trains records its settings in ``flags.json``; a later start in the same workdir must
bring the same result-changing settings (its identity, `cnn_jax.settings.identity`) or it is refused before
anything in the workdir changes. A setting that an older record lacks is read as the value that reproduces the
old behaviour (``absent``). A record that is not a JSON object (damaged, ``null``, a list, a number, a
symbolic link) is refused with its file named, never overwritten as if the workdir were new.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
from typing import Any, Iterator, Mapping, Optional

import jax

from cnn_jax import settings
from cnn_jax.files import json_excerpt, read_json, write_json
from cnn_jax.run.lock import locked
from cnn_jax.workdir_files import SETTINGS_FILE, check_entries, entry_path

EXTENDED_KEY = "extended_from_epochs"
_DAMAGED = ("the run's record of its settings is damaged: restore the file from a copy, or use another --workdir "
            "(nothing in this one was changed)")


class SettingsChanged(ValueError):
    """The workdir holds a run started with other result-changing settings."""


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
    """The settings recorded at the workdir's first start, or None for a new workdir.

    Raises ValueError naming the file when the record is not a JSON object (`cnn_jax.files.read_json`)."""
    path = entry_path(workdir, SETTINGS_FILE)
    try:
        record = read_json(path, _DAMAGED)
    except FileNotFoundError:
        return None
    if not isinstance(record, dict):
        raise ValueError(f"{path} holds {json_excerpt(record)} instead of the run's settings (a JSON object): "
                         f"{_DAMAGED}")
    return record


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


def records(config, workdir: str, extra: Optional[Mapping[str, Any]] = None) -> tuple[dict, dict, dict]:
    """``(record, identity, absent)`` of an experiment's ``config`` plus ``extra`` settings (a study's arm) for
    ``check_settings``: every setting, those that change the result, and what an older record's missing one means."""
    extra = dict(extra or {})
    if config.model_kwargs:
        extra["model_kwargs"] = dict(config.model_kwargs)
    identity = settings.identity(config, extra)
    record = {**settings.flatten(config), **identity, "workdir": workdir}
    absent = {**settings.absent_defaults(type(config)), "model_kwargs": {}}
    return record, identity, absent


def check_workdir(config, workdir: str, extra: Optional[Mapping[str, Any]] = None) -> None:
    """Raises SettingsChanged if ``workdir`` holds a run started with other result-changing settings."""
    check_settings(workdir, *records(config, workdir, extra), extend_epochs=config.run.extend_epochs)


@contextlib.contextmanager
def claim(config, workdir: str, extra: Optional[Mapping[str, Any]] = None) -> Iterator[dict]:
    """Creates and locks ``workdir`` (process 0 only; the others share its lock), refuses planted symbolic links
    in it (`cnn_jax.workdir_files.check_entries`), checks the settings of ``config`` plus ``extra`` against its
    record, and yields the record to keep.

    Nothing is written: the caller records the settings with ``write_settings`` once the run is about to train,
    so that a start that fails earlier (a misspelt dataset) leaves no record that would refuse its corrected rerun.
    """
    make_workdir(workdir)
    with locked(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
        check_entries(workdir)
        yield check_settings(workdir, *records(config, workdir, extra), extend_epochs=config.run.extend_epochs)


def write_settings(workdir: str, record: Mapping[str, Any]) -> None:
    """Records ``record`` (from ``claim``) as the workdir's settings, unless it holds exactly them already."""
    if dict(record) != read_settings(workdir):
        write_json(entry_path(workdir, SETTINGS_FILE), dict(record))
