"""The name of every file and directory a run keeps in its workdir, and the one rule for symbolic links there.

It sits at the bottom of the package (it imports only the standard library), so the engine (`cnn_jax.train`),
the export (`cnn_jax.export`), the run (`cnn_jax.run`) and the scripts all take the names from here:

=======================  ==================================================================
``checkpoints/<step>/``  the latest train states, for resuming (`cnn_jax.train.Checkpointer`)
``best/``                the state with the best validation accuracy, when there is a validation split
``metrics.jsonl``        one JSON record per logged train interval and evaluation
``tensorboard/``         TensorBoard event files of the same records
``flags.json``           the settings the run was started with (`cnn_jax.run.workdir`)
``normalization.json``   the training images' mean and std a from-scratch model normalizes by
``results.json``         the finished run's summary
``export/``              what inference needs (`cnn_jax.export`)
``figures/``             training curves, confusion matrix, per-class accuracy, predictions
``.lock``                the kernel lock one run holds, naming its process (`cnn_jax.run.lock`)
=======================  ==================================================================

Experiments add their own beside these: a gallery (``gallery/``), a study's table (``comparison.*``), a two-phase
transfer run's first phase (``feature_extract/``), the numbers behind the concept figures (``concepts.json``).

Symbolic links: ``--workdir`` itself may be one (it is the user's own path, e.g. onto a bigger disk), but the
run writes only real files and directories inside it. An entry named here that is a symbolic link, or a
symbolic link directly inside one of these directories, was planted: following it would read another run's
record as this run's, or write the export, metrics, events, figures or checkpoints wherever it points (and
swap a directory link away from under its target). Such a link is refused with `PlantedSymlink`, one line that
names it and the fix, when the run claims its workdir (`check_entries`) and again where each is written
(`entry_path`); nothing is followed, moved or deleted.
"""
from __future__ import annotations

import os

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SETTINGS_FILE = "flags.json"
NORMALIZATION_FILE = "normalization.json"
RESULTS_FILE = "results.json"
EXPORT_DIR = "export"
FIGURES_DIR = "figures"
LOCK_FILE = ".lock"
GALLERY_DIR = "gallery"
COMPARISON_JSON, COMPARISON_TABLE, COMPARISON_FIGURE = "comparison.json", "comparison.md", "comparison.png"
FEATURE_EXTRACT_DIR = "feature_extract"
CONCEPTS_FILE = "concepts.json"

NAMES = (CHECKPOINTS_DIR, BEST_DIR, METRICS_FILE, TENSORBOARD_DIR, SETTINGS_FILE, NORMALIZATION_FILE, RESULTS_FILE,
         EXPORT_DIR, FIGURES_DIR, LOCK_FILE, GALLERY_DIR, COMPARISON_JSON, COMPARISON_TABLE, COMPARISON_FIGURE,
         FEATURE_EXTRACT_DIR, CONCEPTS_FILE)


class PlantedSymlink(ValueError):
    """A workdir entry that the run reads or writes is a symbolic link."""


def entry_path(directory: str, *names: str) -> str:
    """``directory/names...``, each component after ``directory`` checked not to be a symbolic link
    (PlantedSymlink otherwise); the path need not exist."""
    path = directory
    for name in names:
        path = os.path.join(path, name)
        if os.path.islink(path):
            raise PlantedSymlink(
                f"{path!r} is a symbolic link (to {os.readlink(path)!r}), and a run writes only real files and "
                "directories inside its workdir: replace the link by a copy of what it points to, or delete it and "
                "rerun; to keep a run on another disk, make --workdir itself the link")
    return path


def check_entries(workdir: str) -> None:
    """Raises PlantedSymlink for the first symbolic link among the entries named here, or directly inside those
    that are directories: called when a run claims ``workdir``, before it reads or writes anything there."""
    for name in NAMES:
        path = entry_path(workdir, name)
        if os.path.isdir(path):
            with os.scandir(path) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    entry_path(path, entry.name)
