"""Tests of cnn_jax.run.lock and cnn_jax.run.workdir (the lock and the recorded settings) and cnn_jax.files (durable
writes, file keys)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from cnn_jax import files, run, settings
from cnn_jax.run import lock
from cnn_jax.run import workdir as workdir_lib
from cnn_jax.run.lock import WorkdirBusy
from cnn_jax.run.workdir import SettingsChanged
from cnn_jax.workdir_files import LOCK_FILE, SETTINGS_FILE

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


def test_a_lock_left_by_a_dead_process_of_this_host_is_taken_over_and_said(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "since": "then"}))
    with caplog.at_level(logging.WARNING, logger="cnn_jax.run.lock"):
        with claim(tmp_path):
            assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert f"taking over the lock of process {pid} on host" in caplog.text


def test_a_lock_from_another_host_is_never_taken_and_the_message_says_how_to_clear_it(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": "then"}))
    with pytest.raises(WorkdirBusy, match=r"locked by process 1 on host elsewhere.*delete .*\.lock and rerun"):
        with claim(tmp_path):
            pass
    assert json.loads((tmp_path / ".lock").read_text())["host"] == "elsewhere"


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
