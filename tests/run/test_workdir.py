"""Tests of cnn_jax.run.workdir (the claim and the recorded settings), cnn_jax.run.normalization (the recorded
statistics) and cnn_jax.files (durable writes, file keys); the lock itself is tests/run/test_lock.py's."""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket

import pytest

from cnn_jax import files, run, settings
from cnn_jax.run import lock
from cnn_jax.run import workdir as workdir_lib
from cnn_jax.run.lock import WorkdirBusy
from cnn_jax.run.workdir import SettingsChanged
from cnn_jax.train.metrics import MetricWriter
from cnn_jax.workdir_files import LOCK_FILE, METRICS_FILE, NORMALIZATION_FILE, SETTINGS_FILE

RECORD = {"learning_rate": 0.1, "epochs": 2, "log_every_steps": 100, "workdir": "w"}
IDENTITY = {"learning_rate": 0.1, "epochs": 2}
CONFIG = run.Experiment(model="simple_cnn", data=run.DataConfig("mnist", batch_size=8))


@contextlib.contextmanager
def claim(path, record=RECORD, identity=IDENTITY, absent=(), **kwargs):
    """A claim as a training run makes it, of the given settings: checked, then recorded when training starts."""
    workdir_lib.make_workdir(str(path))
    with lock.locked(str(path)):
        kept = workdir_lib.check_settings(str(path), record, identity, dict(absent), **kwargs)
        workdir_lib.write_settings(str(path), kept)
        yield kept


def test_a_start_that_fails_before_training_leaves_no_record(tmp_path):
    with pytest.raises(RuntimeError):
        with run.claim(CONFIG, str(tmp_path)):
            raise RuntimeError("the dataset name was misspelt")
    assert not (tmp_path / SETTINGS_FILE).exists() and not (tmp_path / LOCK_FILE).exists()


def test_a_claimed_config_refuses_a_rerun_that_changes_its_result(tmp_path):
    with run.claim(CONFIG, str(tmp_path)) as record:
        run.write_settings(str(tmp_path), record)
    assert json.loads((tmp_path / SETTINGS_FILE).read_text())["learning_rate"] == CONFIG.train.learning_rate
    with run.claim(settings.replace(CONFIG, log_every_steps=7), str(tmp_path)) as record:  # bookkeeping
        assert record["log_every_steps"] == 7
    with pytest.raises(SettingsChanged, match="learning_rate: 0.1 then, 0.5 now"):
        run.check_workdir(settings.replace(CONFIG, learning_rate=0.5), str(tmp_path))


def test_a_second_run_is_refused_with_the_holder_named_while_the_first_holds_the_lock(tmp_path):
    with claim(tmp_path):
        lock = json.loads((tmp_path / ".lock").read_text())
        assert lock["pid"] == os.getpid() and lock["host"] == socket.gethostname()
        with pytest.raises(WorkdirBusy, match=rf"in use by process {os.getpid()} on host {socket.gethostname()}"):
            with claim(tmp_path):
                pass
    assert not (tmp_path / ".lock").exists()  # released at the end
    with claim(tmp_path):  # and free again
        pass


def test_changed_settings_are_refused_before_anything_is_written_with_every_difference_listed(tmp_path):
    with claim(tmp_path):
        pass
    before = (tmp_path / "flags.json").read_bytes()
    changed = {"learning_rate": 0.5, "epochs": 4}
    with pytest.raises(SettingsChanged) as error:
        with claim(tmp_path, {**RECORD, **changed}, changed):
            pytest.fail("the block must not run")
    message = str(error.value)
    assert "(learning_rate: 0.1 then, 0.5 now; epochs: 2 then, 4 now)" in message
    assert "use a new --workdir" in message and "--extend_epochs" not in message
    assert (tmp_path / "flags.json").read_bytes() == before and not (tmp_path / ".lock").exists()


def test_bookkeeping_changes_are_accepted_and_more_epochs_only_with_extend_epochs(tmp_path):
    with claim(tmp_path):
        pass
    with claim(tmp_path, {**RECORD, "log_every_steps": 5}) as record:
        assert record["log_every_steps"] == 5
    longer = {**IDENTITY, "epochs": 3}
    with pytest.raises(SettingsChanged, match="epochs: 2 then, 3 now.*add --extend_epochs"):
        with claim(tmp_path, {**RECORD, **longer}, longer):
            pass
    with claim(tmp_path, {**RECORD, **longer}, longer, extend_epochs=True) as record:
        assert record["epochs"] == 3 and record[workdir_lib.EXTENDED_KEY] == [2]
    with claim(tmp_path, {**RECORD, **longer}, longer) as record:  # the extended run resumes as it is
        assert record[workdir_lib.EXTENDED_KEY] == [2]


def test_a_setting_an_older_record_lacks_means_the_default_that_reproduces_it(tmp_path):
    (tmp_path / "flags.json").write_text(json.dumps(RECORD))  # written before test_time_shift existed
    newer = {**IDENTITY, "test_time_shift": 0}
    with claim(tmp_path, {**RECORD, **newer}, newer, absent={"test_time_shift": 0}):
        pass
    shifted = {**IDENTITY, "test_time_shift": 1}
    with pytest.raises(SettingsChanged, match="test_time_shift: 0 then, 1 now"):
        with claim(tmp_path, {**RECORD, **shifted}, shifted, absent={"test_time_shift": 0}):
            pass


def test_a_workdir_that_is_a_file_or_not_writable_gets_an_error_naming_it(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(NotADirectoryError, match="--workdir is a file"):
        with claim(path):
            pass
    locked = tmp_path / "readonly"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who may write anywhere")  # root ignores permission bits
        with pytest.raises(PermissionError, match="not writable"):
            with claim(locked):
                pass
    finally:
        os.chmod(locked, 0o700)


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    files.write_json(str(path), {"old": 1})

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        files.write_json(str(path), {"new": 2})
    assert json.loads(path.read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["results.json"]


def test_an_atomic_write_of_a_stream_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "arrays.bin"
    files.write_atomically(str(path), b"old content, longer than the new")
    files.write_atomically(str(path), lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"

    def fails_halfway(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        files.write_atomically(str(path), fails_halfway)
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["arrays.bin"]


def test_a_files_key_changes_with_a_file_s_size_or_mtime_and_the_extra_fields(tmp_path):
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    for path in paths:
        with open(path, "wb") as f:
            f.write(b"1234")
    key = files.files_key(paths, (32, 32), 3)
    assert files.files_key(paths, (32, 32), 3) == key and len(key) == 32
    assert files.files_key(paths, (32, 32), 1) != key
    assert files.files_key(paths[:1], (32, 32), 3) != key

    stat = os.stat(paths[1])
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: same size, another mtime
    touched = files.files_key(paths, (32, 32), 3)
    assert touched != key
    with open(paths[1], "wb") as f:
        f.write(b"5678!")
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # rewritten: another size, the same mtime
    assert files.files_key(paths, (32, 32), 3) not in (key, touched)


# --- damaged records ------------------------------------------------------------------------------------------

DAMAGED = ("the run's record of its settings is damaged: restore the file from a copy, or use another --workdir "
           "(nothing in this one was changed)")


@pytest.mark.parametrize("content,said", [
    (b"[]", "holds [] instead of the run's settings (a JSON object)"),
    (b"null", "holds null instead of the run's settings (a JSON object)"),
    (b"3", "holds 3 instead of the run's settings (a JSON object)"),
    (b'"' + b"x" * 100 + b'"', 'holds "' + "x" * 39 + "... instead of the run's settings (a JSON object)"),
    (b'{"epochs": 2,', "is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 14 "
                       "(char 13))"),
    (b"\xff{}", "is not valid JSON ('utf-8' codec can't decode byte 0xff in position 0: invalid start byte)"),
    (b"[" * 100_000, "is not valid JSON (maximum recursion depth exceeded"),
    (b" " * (1 << 20) + b"{}", "is larger than 1048576 bytes, more than any record it should hold"),
], ids=["list", "null", "number", "string", "cut short", "not utf-8", "nested", "huge"])
def test_a_settings_record_that_is_no_object_is_refused_naming_the_file_and_kept(tmp_path, content, said):
    (tmp_path / SETTINGS_FILE).write_bytes(content)
    with pytest.raises(ValueError) as refused:
        with claim(tmp_path):
            pytest.fail("a damaged record was read as a new workdir")
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / SETTINGS_FILE} {said}") and message.endswith(DAMAGED), message
    assert "\n" not in message
    assert (tmp_path / SETTINGS_FILE).read_bytes() == content and not (tmp_path / LOCK_FILE).exists()


@pytest.mark.parametrize("make", [os.mkfifo, os.mkdir], ids=["fifo", "directory"])
def test_a_settings_record_that_is_no_regular_file_is_refused_without_waiting_on_it(tmp_path, make):
    make(tmp_path / SETTINGS_FILE)
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / SETTINGS_FILE))} is not a regular file: "
                                         f"{re.escape(DAMAGED)}$"):
        workdir_lib.read_settings(str(tmp_path))


class _Info:
    image_shape, num_train = (8, 8, 3), 10


class _Dataset:
    """A dataset whose statistics cannot be computed: normalized() must take them from the workdir or refuse."""
    info = _Info()


RECOMPUTE = "delete it and rerun: the statistics are computed again from the same training images"


@pytest.mark.parametrize("content,problem", [
    ('{"mean": [0.5, 0.5], "std": [0.2, 0.2, 0.2]}',
     "'mean' is [0.5, 0.5], not a list of 3 finite numbers, one per channel"),
    ('{"std": [0.2, 0.2, 0.2]}', "'mean' is null, not a list of 3 finite numbers, one per channel"),
    ('{"mean": [0.5, NaN, 0.5], "std": [0.2, 0.2, 0.2]}',
     "'mean' is [0.5, NaN, 0.5], not a list of 3 finite numbers, one per channel"),
    ('{"mean": [0.5, 0.5, 0.5], "std": [0.2, true, 0.2]}',
     "'std' is [0.2, true, 0.2], not a list of 3 finite numbers, one per channel"),
    ('{"mean": [0.5, 0.5, 0.5], "std": "0.2"}', "'std' is \"0.2\", not a list of 3 finite numbers, one per channel"),
    ('{"mean": [0.5, 0.5, 0.5], "std": [0.2, 0, 0.2]}', "'std' is [0.2, 0, 0.2]: each must be positive"),
    ("[]", "it holds [], not a JSON object"),
    ("null", "it holds null, not a JSON object"),
])
def test_a_normalization_record_that_is_no_record_is_refused_naming_the_file_and_kept(tmp_path, content, problem):
    path = tmp_path / NORMALIZATION_FILE
    path.write_text(content)
    with pytest.raises(ValueError) as refused:
        run.normalized(CONFIG, _Dataset(), str(tmp_path), {})
    assert str(refused.value) == f"{path} is not a normalization record ({problem}): {RECOMPUTE}"
    assert path.read_text() == content


def test_a_normalization_record_that_is_not_json_is_refused_naming_the_file(tmp_path):
    (tmp_path / NORMALIZATION_FILE).write_text('{"mean": [0.5,')
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / NORMALIZATION_FILE))} is not valid JSON \(.*\): "
                                         rf"{re.escape(RECOMPUTE)}$"):
        run.normalized(CONFIG, _Dataset(), str(tmp_path), {})


def test_a_valid_normalization_record_is_read_back_as_it_was_written(tmp_path):
    files.write_json(str(tmp_path / NORMALIZATION_FILE), {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "images": 9})
    kwargs = run.normalized(CONFIG, _Dataset(), str(tmp_path), {"width": 4})
    assert kwargs == {"width": 4, "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}


def test_a_metrics_line_that_is_json_but_no_record_is_refused_and_a_torn_last_line_dropped(tmp_path):
    path = tmp_path / METRICS_FILE
    record = {"kind": "train", "step": 1, "train_loss": 1.0}
    planted = json.dumps(record) + "\n[]\n" + json.dumps({**record, "step": 2}) + "\n"
    path.write_text(planted)
    with pytest.raises(ValueError) as refused:
        MetricWriter(str(tmp_path), resume_step=5)
    assert str(refused.value) == (f'{path} line 2 holds [], not a metrics record (an object with an integer "step"): '
                                  "restore the file, or delete that line, and rerun")
    assert path.read_text() == planted
    path.write_text(json.dumps(record) + '\n{"kind": "train", "st')  # a write cut short by a crash
    assert MetricWriter(str(tmp_path), resume_step=5, write=False).history == [record]
