"""A symbolic link planted in a workdir is refused, never followed (cnn_jax.workdir_files states the rule): at the
claim, before anything is read or written, and again where each entry is written (export, metrics, events,
checkpoints, figures); `--workdir` itself may be a link. Issue #30's reproduction: a symlinked `export/` used to
break the re-export after the swap, skip the figures and leave a stray `.export.old-*`."""
from __future__ import annotations

import json
import logging
import os
import re

import numpy as np
import pytest

from cnn_jax import export, files, run, settings, workdir_files
from cnn_jax.train import Outcome
from cnn_jax.train.checkpoint import Checkpointer
from cnn_jax.train.metrics import MetricWriter
from cnn_jax.workdir_files import PlantedSymlink

CONFIG = run.Experiment(model="simple_cnn", data=run.DataConfig("mnist", batch_size=8))


def _planted(workdir, name, target) -> str:
    """``workdir/name`` made a symbolic link to ``target``; returns the message that refuses it."""
    link = workdir / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return f"'{link}' is a symbolic link (to '{target}'), and a run writes only real files and directories"


def _snapshot(root) -> dict:
    """Every path below ``root`` with its bytes (files) or None (directories), links not followed."""
    found = {}
    for directory, dirs, names in os.walk(root):
        for name in dirs:
            found[os.path.join(directory, name)] = None
        for name in names:
            path = os.path.join(directory, name)
            found[path] = os.readlink(path) if os.path.islink(path) else open(path, "rb").read()
    return found


@pytest.fixture
def elsewhere(tmp_path):
    """What planted links point to: a directory and a file whose contents must survive everything."""
    target = tmp_path / "elsewhere"
    (target / "dir").mkdir(parents=True)
    (target / "dir" / "meta.json").write_text('{"keep": true}')
    (target / "file").write_text("not this run's\n")
    return target


@pytest.mark.parametrize("name,kind", [
    (workdir_files.EXPORT_DIR, "dir"), (workdir_files.CHECKPOINTS_DIR, "dir"), (workdir_files.TENSORBOARD_DIR, "dir"),
    (workdir_files.FIGURES_DIR, "dir"), (workdir_files.METRICS_FILE, "file"), (workdir_files.SETTINGS_FILE, "file"),
    (workdir_files.RESULTS_FILE, "file"), (workdir_files.NORMALIZATION_FILE, "file"),
    (os.path.join(workdir_files.FIGURES_DIR, "confusion_matrix.png"), "file"),
    (os.path.join(workdir_files.CHECKPOINTS_DIR, "8"), "dir"),
])
def test_the_claim_refuses_a_planted_link_before_reading_or_writing_anything(tmp_path, elsewhere, name, kind):
    workdir = tmp_path / "w"
    message = _planted(workdir, name, elsewhere / kind)
    before = _snapshot(tmp_path)
    with pytest.raises(PlantedSymlink) as refused:
        with run.claim(settings.replace(CONFIG, workdir=str(workdir)), str(workdir)):
            pytest.fail("claimed a workdir with a planted link")
    assert str(refused.value).startswith(message) and "delete it and rerun" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert _snapshot(tmp_path) == before  # the link, its target and the workdir as they were; the lock released


def test_a_workdir_that_is_itself_a_link_is_the_user_s_path_and_is_used(tmp_path):
    (tmp_path / "big_disk").mkdir()
    (tmp_path / "w").symlink_to(tmp_path / "big_disk")
    config = settings.replace(CONFIG, workdir=str(tmp_path / "w"))
    with run.claim(config, str(tmp_path / "w")) as record:
        run.write_settings(str(tmp_path / "w"), record)
    assert json.loads((tmp_path / "big_disk" / workdir_files.SETTINGS_FILE).read_text())["workdir"] == str(
        tmp_path / "w")


def test_a_linked_export_is_refused_before_any_work_and_leaves_no_stray_directory(tmp_path, elsewhere):
    workdir = tmp_path / "w"
    message = _planted(workdir, workdir_files.EXPORT_DIR, elsewhere / "dir")
    before = _snapshot(tmp_path)
    with pytest.raises(PlantedSymlink, match="^" + re.escape(message)):
        export.save_export(str(workdir), "simple_cnn", {}, {}, ["a", "b"], [8, 8, 1])
    assert _snapshot(tmp_path) == before and sorted(os.listdir(workdir)) == ["export"]


def test_swapping_in_over_a_link_replaces_the_link_and_never_deletes_its_target(tmp_path, elsewhere):
    staged = tmp_path / ".export.new-1"
    staged.mkdir()
    (staged / "meta.json").write_text("new")
    (tmp_path / "export").symlink_to(elsewhere / "dir")
    files.swap_in(str(staged), str(tmp_path / "export"))
    assert not (tmp_path / "export").is_symlink() and (tmp_path / "export" / "meta.json").read_text() == "new"
    assert (elsewhere / "dir" / "meta.json").read_text() == '{"keep": true}'
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "export"]  # no .export.old-* left behind


@pytest.mark.parametrize("name", [workdir_files.METRICS_FILE, workdir_files.TENSORBOARD_DIR])
def test_metrics_and_events_neither_read_nor_write_through_a_link(tmp_path, elsewhere, name):
    target = elsewhere / ("file" if name == workdir_files.METRICS_FILE else "dir")
    (elsewhere / "file").write_text(json.dumps({"kind": "train", "step": 1, "train_loss": 9.0}) + "\n")
    message = _planted(tmp_path, name, target)
    before = _snapshot(elsewhere)
    with pytest.raises(PlantedSymlink, match="^" + re.escape(message)):
        MetricWriter(str(tmp_path), resume_step=5)
    assert _snapshot(elsewhere) == before


def test_a_linked_checkpoint_directory_is_refused_before_orbax_writes_or_deletes_there(tmp_path, elsewhere):
    message = _planted(tmp_path, workdir_files.CHECKPOINTS_DIR, elsewhere / "dir")
    with pytest.raises(PlantedSymlink, match="^" + re.escape(message)):
        Checkpointer(str(tmp_path / workdir_files.CHECKPOINTS_DIR), max_to_keep=1)
    assert _snapshot(elsewhere)[str(elsewhere / "dir" / "meta.json")] == b'{"keep": true}'


def test_a_figure_planted_as_a_link_is_skipped_and_its_target_kept(tmp_path, elsewhere, caplog):
    class Info:
        class_names = ("a", "b")
        num_classes = 2

    class Dataset:
        info = Info()

        def eval_batches(self, split):
            yield {"image": np.zeros((4, 8, 8, 3), np.float32), "mask": np.ones(4, np.float32)}

    test = {"labels": np.array([0, 1, 1, 0]), "predictions": np.array([0, 1, 0, 0])}
    outcome = Outcome(state=None, history=[], test=test, results={})
    figures = tmp_path / "figures"
    _planted(figures, "confusion_matrix.png", elsewhere / "file")
    with caplog.at_level(logging.WARNING, logger="cnn_jax.run.report"):
        run.write_figures(str(figures), outcome, Dataset())
    assert "figure confusion_matrix.png skipped: PlantedSymlink: " in caplog.text
    assert (elsewhere / "file").read_text() == "not this run's\n"
    assert sorted(os.listdir(figures)) == ["confusion_matrix.png", "per_class_accuracy.png", "predictions.png"]
    assert (figures / "confusion_matrix.png").is_symlink()


def test_an_artifact_is_never_written_through_a_linked_export(tmp_path):
    """`scripts/export.py` writes artifacts without claiming the workdir: a linked `export/`, or a linked artifact
    inside it, is refused there too, and the link's target is left as it was."""
    from cnn_jax import export
    from cnn_jax.workdir_files import PlantedSymlink

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "model.onnx").write_bytes(b"theirs")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "export").symlink_to(elsewhere)
    with pytest.raises(PlantedSymlink, match="is a symbolic link"):
        export.export_format(str(workdir), "onnx")
    (workdir / "export").unlink()
    (workdir / "export").mkdir()
    (workdir / "export" / "model.onnx").symlink_to(elsewhere / "model.onnx")
    with pytest.raises(PlantedSymlink, match="model.onnx"):
        export.export_format(str(workdir), "onnx")
    assert (elsewhere / "model.onnx").read_bytes() == b"theirs"
