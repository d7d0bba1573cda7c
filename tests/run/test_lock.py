"""Tests of cnn_jax.run.lock: a kernel lock (flock) held while the run lives, with real concurrent processes.

Issue #30's reproductions: two starts racing on a stale lock, a lock naming our own host and pid (PID reuse), a
0-byte or garbled lock left by a full disk, a lock naming another host, and SIGTERM outside the training loop.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import ROOT

from cnn_jax import run, settings
from cnn_jax.run import lock
from cnn_jax.run.lock import WorkdirBusy
from cnn_jax.workdir_files import LOCK_FILE, SETTINGS_FILE, PlantedSymlink

HOST = socket.gethostname()
CONFIG = run.Experiment(model="simple_cnn", data=run.DataConfig("mnist", batch_size=8))

# A start as the command makes it: waits for the file `go`, takes the lock, says so and holds it until `release`
# exists; refused, it prints the command's one `error:` line and exits 1.
START = textwrap.dedent("""
    import os, sys, time
    from cnn_jax.run.lock import WorkdirBusy, locked
    workdir = sys.argv[1]
    print("ready", flush=True)
    while not os.path.exists(os.path.join(workdir, "..", "go")):
        time.sleep(0.001)
    try:
        with locked(workdir):
            print("won", os.getpid(), flush=True)
            while not os.path.exists(os.path.join(workdir, "..", "release")):
                time.sleep(0.01)
    except WorkdirBusy as error:
        sys.exit(f"error: {error}")
""")


def _start(workdir) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", START, str(workdir)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ROOT})


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def _held_by_another_descriptor(path) -> bool:
    """Whether a lock on ``path`` is held (tried from a descriptor of our own, which flock treats as another)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@pytest.mark.parametrize("stale", ["dead pid", "empty", "garbled"])
def test_two_starts_racing_on_a_stale_lock_see_one_winner_and_the_other_names_it(tmp_path, stale):
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / LOCK_FILE).write_bytes({"dead pid": json.dumps({"host": HOST, "pid": _dead_pid(), "since": "then"}),
                                       "empty": "", "garbled": '{"host": "'}[stale].encode())
    procs = [_start(workdir) for _ in range(2)]
    assert [p.stdout.readline() for p in procs] == ["ready\n"] * 2  # both wait for the go, their imports done
    (tmp_path / "go").touch()
    deadline = time.monotonic() + 60
    while not any(p.poll() is not None for p in procs):  # the loser leaves; the winner holds on
        assert time.monotonic() < deadline, "neither start finished"
        time.sleep(0.05)
    (tmp_path / "release").touch()
    outcomes = [(p.wait(timeout=60), *p.communicate()) for p in procs]
    winners = [out.split() for code, out, _ in outcomes if code == 0]
    losers = [err for code, _, err in outcomes if code == 1]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert winners[0][0] == "won"
    assert re.fullmatch(rf"error: workdir {re.escape(str(workdir))} is in use by process {winners[0][1]} on host "
                        rf"{re.escape(HOST)} \(since [0-9T:+-]+\): wait for it to finish, stop it, or use another "
                        r"--workdir\n", losers[0]), losers[0]
    assert not (workdir / LOCK_FILE).exists()  # the winner released it


@pytest.mark.parametrize("left", [
    pytest.param(lambda: {"host": HOST, "pid": os.getpid(), "since": "before the restart"}, id="our own pid"),
    pytest.param(lambda: {"host": HOST, "pid": _dead_pid(), "since": "then"}, id="a dead pid"),
    pytest.param(lambda: b"", id="0 bytes from a full disk"),
    pytest.param(lambda: b'{"host": "x", "pi', id="cut short"),
    pytest.param(lambda: b"\x00" * 64, id="zeros"),
    pytest.param(lambda: [], id="a list"),
    pytest.param(lambda: None, id="null"),
])
def test_a_lock_file_no_process_holds_is_taken_over_and_the_takeover_said(tmp_path, caplog, left):
    content = left()
    (tmp_path / LOCK_FILE).write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    with caplog.at_level(logging.WARNING, logger="cnn_jax.run.lock"):
        with lock.locked(str(tmp_path)):
            holder = json.loads((tmp_path / LOCK_FILE).read_text())
            assert holder["pid"] == os.getpid() and holder["host"] == HOST and holder["since"] != "then"
            assert _held_by_another_descriptor(tmp_path / LOCK_FILE)
    said = caplog.text
    if isinstance(content, dict):
        assert f"taking over the lock of process {content['pid']} on host {HOST}" in said
    elif content == b"":  # what a new lock file holds until its holder writes its name: nothing to say
        assert said == ""
    else:
        size = len(content) if isinstance(content, bytes) else len(json.dumps(content))
        assert f"names no run ({size} bytes that are no holder record" in said and "taking the workdir over" in said
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_held_by_a_live_process_is_refused_and_free_the_moment_it_is_killed(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    (tmp_path / "go").touch()
    holder = _start(workdir)
    assert holder.stdout.readline() == "ready\n" and holder.stdout.readline().split()[0] == "won"
    with pytest.raises(WorkdirBusy) as refused:
        with lock.locked(str(workdir)):
            pytest.fail("entered a workdir another process holds")
    assert str(refused.value).startswith(f"workdir {workdir} is in use by process {holder.pid} on host {HOST} (since ")
    holder.send_signal(signal.SIGKILL)  # no handler runs: the kernel alone releases the lock
    holder.wait(timeout=30)
    assert (workdir / LOCK_FILE).exists()
    with lock.locked(str(workdir)):
        assert json.loads((workdir / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_lock_file_naming_another_host_is_refused_with_how_to_clear_it_and_kept(tmp_path):
    record = json.dumps({"host": "gpu-node-7", "pid": 4242, "since": "then"})
    (tmp_path / LOCK_FILE).write_text(record)
    with pytest.raises(WorkdirBusy) as refused:
        with lock.locked(str(tmp_path)):
            pytest.fail("took over another host's lock")
    assert str(refused.value) == (
        f"workdir {tmp_path} is locked by process 4242 on host gpu-node-7 (since then), which this host cannot see. "
        f"If that run is over, delete {tmp_path / LOCK_FILE} and rerun; otherwise wait for it or use another --workdir")
    assert (tmp_path / LOCK_FILE).read_text() == record


def test_a_planted_lock_symlink_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep me")
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / LOCK_FILE).symlink_to(target)
    with pytest.raises(PlantedSymlink, match=rf"'{workdir / LOCK_FILE}' is a symbolic link \(to '{target}'\)"):
        with lock.locked(str(workdir)):
            pytest.fail("wrote through a planted link")
    assert target.read_text() == "keep me" and (workdir / LOCK_FILE).is_symlink()


def test_a_start_that_locked_a_file_its_holder_deleted_locks_the_current_one(tmp_path, monkeypatch):
    path = tmp_path / LOCK_FILE
    real_flock = fcntl.flock
    calls = []

    def released_meanwhile(fd, operation):
        calls.append(operation)
        if len(calls) == 1:  # the holder deletes the file and unlocks between our open and our flock
            os.remove(path)
        return real_flock(fd, operation)

    monkeypatch.setattr(lock.fcntl, "flock", released_meanwhile)
    with lock.locked(str(tmp_path)):
        assert len(calls) == 2  # the deleted file's lock was dropped and the current file locked
        monkeypatch.setattr(lock.fcntl, "flock", real_flock)
        assert _held_by_another_descriptor(path)
        assert json.loads(path.read_text())["pid"] == os.getpid()


CLAIM_AND_WAIT = textwrap.dedent("""
    import json, sys, time
    from cnn_jax import run, settings
    config = settings.replace(run.Experiment(model="simple_cnn", data=run.DataConfig("mnist", batch_size=8)),
                              workdir=sys.argv[1])
    with run.claim(config, sys.argv[1]) as record:
        run.write_settings(sys.argv[1], record)
        print("decoding", flush=True)  # where a run reads its data, before the training loop's handler exists
        time.sleep(600)
""")


def test_sigterm_outside_the_training_loop_leaves_a_workdir_the_rerun_claims(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", CLAIM_AND_WAIT, str(tmp_path)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.stdout.readline() == "decoding\n", proc.stderr.read()
    recorded = (tmp_path / SETTINGS_FILE).read_bytes()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM  # killed on the spot: no handler, no cleanup
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == proc.pid  # the file stays; the lock does not
    with run.claim(settings.replace(CONFIG, workdir=str(tmp_path)), str(tmp_path)) as record:
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        assert record["workdir"] == str(tmp_path)
    assert (tmp_path / SETTINGS_FILE).read_bytes() == recorded
