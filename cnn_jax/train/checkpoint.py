"""Checkpoints with orbax: the latest N for resuming (and, kept apart, the best).

A checkpoint holds the train state as nested dicts (`flax.serialization.to_state_dict`), so
that it reads back into any TrainState of the same shapes. Orbax writes each step into a
temporary directory and renames it when complete, so an interrupted save never shows up as a
step; a checkpoint that is present but unreadable is reported and moved aside, and the one
before it is used. Orbax does not fsync: once a save has finished (by the next save, ``wait`` or
``close``), its files and the directory entries naming it are fsynced here, so a power cut cannot
lose a checkpoint that the metrics already count.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Optional

import jax
from flax import serialization

from cnn_jax import files, pytrees, workdir_files
from cnn_jax.train.state import TrainState

log = logging.getLogger(__name__)


def _orbax():
    """``orbax.checkpoint``, imported when first used: it brings tensorstore and an event loop, tens of MB of resident
    memory that a process which never checkpoints (a benchmark, a profile, an export) does without."""
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

    return ocp


class CheckpointMismatchError(ValueError):
    """A checkpoint's arrays do not fit the train state it is restored into."""


class CheckpointError(RuntimeError):
    """No checkpoint can be read, or one cannot be written (a full disk, a file-size limit)."""


class Checkpointer:
    """Saves and restores train states under `directory/<step>/`, keeping the latest few.

    The best checkpoint is a Checkpointer of its own with `max_to_keep=1`, saved to only when
    the validation accuracy improves. A `directory` that is a symbolic link is refused
    (`cnn_jax.workdir_files.PlantedSymlink`): orbax would write, and delete old steps, wherever it points.
    """

    def __init__(self, directory: str, max_to_keep: int):
        self.directory = workdir_files.entry_path(*os.path.split(os.path.abspath(directory)))
        ocp = _orbax()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_handlers=ocp.StandardCheckpointHandler())
        self._unsynced: Optional[int] = None  # the step of a save not yet fsynced

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def save(self, state: TrainState) -> None:
        """Saves `state` at its step, in the background (`wait` or `close` to finish); the save before it
        is finished and fsynced first."""
        with self._writing():
            self._finish()
            self._manager.save(int(state.step), args=_orbax().args.StandardSave(
                serialization.to_state_dict(state)), force=True)
            self._unsynced = int(state.step)

    def _finish(self) -> None:
        """Waits for the background save, then fsyncs its files, its directory and the one naming it."""
        self._manager.wait_until_finished()
        step, self._unsynced = self._unsynced, None
        path = os.path.join(self.directory, str(step))
        if step is not None and jax.process_index() == 0 and os.path.isdir(path):
            files.fsync_tree(path)
            files.fsync_directory(self.directory)

    @contextlib.contextmanager
    def _writing(self):
        """Turns a failed write (of this save, or of an earlier one still in the background) into one error."""
        try:
            yield
        except Exception as error:  # noqa: BLE001 -- orbax reports I/O failures as assorted types.
            raise CheckpointError(
                f"could not write a checkpoint in {self.directory} ({type(error).__name__}: {error}). Fix: free "
                "disk space or raise the file-size limit, then run the same command again: it resumes from the "
                "last complete checkpoint") from None

    def restore(self, target: TrainState) -> Optional[TrainState]:
        """`target` with the arrays of the latest readable checkpoint, or None if there is none.

        An unreadable checkpoint (cut short, corrupted) is reported and renamed to
        `unreadable-<step>`, out of the way of new saves, and the one before it is tried.
        Raises CheckpointMismatchError naming the differences when the checkpoint belongs to
        another model or optimizer, and RuntimeError when checkpoints exist but none is readable.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        wanted = pytrees.signature(serialization.to_state_dict(target))
        for step in steps:
            try:
                saved = pytrees.signature(getattr(self._manager.item_metadata(step), "tree", None) or {})
                if not saved:
                    raise ValueError("its metadata lists no arrays")
            except Exception as error:  # noqa: BLE001 -- any failure to read means unreadable.
                self._set_aside(step, error)
                continue
            _check_compatible(saved, wanted, f"{self.directory}/{step}")
            try:
                restored = self._manager.restore(step, args=_orbax().args.StandardRestore(
                    serialization.to_state_dict(target)))
            except Exception as error:  # noqa: BLE001
                self._set_aside(step, error)
                continue
            return serialization.from_state_dict(target, restored)
        if steps:
            raise CheckpointError(f"no readable checkpoint in {self.directory} (steps {steps}, now set aside as "
                                  "unreadable-<step>): delete that directory to start afresh, or use another "
                                  "--workdir")
        return None

    def _set_aside(self, step: int, error: Exception) -> None:
        aside = os.path.join(self.directory, f"unreadable-{step}")
        log.warning("checkpoint %s/%d is unreadable (%s: %s); moved to %s, trying the one "
                    "before it", self.directory, step, type(error).__name__, error, aside)
        if jax.process_index() == 0:
            os.replace(os.path.join(self.directory, str(step)), aside)
        self._manager.reload()

    def wait(self) -> None:
        """Blocks until background saves are written and fsynced."""
        with self._writing():
            self._finish()

    def close(self) -> None:
        with self._writing():
            self._finish()
            self._manager.close()


def _check_compatible(saved: dict, wanted: dict, checkpoint: str) -> None:
    """Raises CheckpointMismatchError listing the arrays whose names or shapes differ."""
    problems = pytrees.differences(saved, wanted, "checkpoint")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CheckpointMismatchError(
            f"the checkpoint {checkpoint} was written by a different model or optimizer "
            f"({len(problems)} mismatches: {shown}): use the same model and optimizer flags "
            "as the run that wrote it, or a new workdir to start afresh")
