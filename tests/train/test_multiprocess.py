"""Multi-process runs on one machine: two processes on localhost join through jax.distributed (gloo CPU
collectives), each reading only its rows of every batch, and end with the parameters of one process over the
same devices; bad input to a multi-process run gets one clear error line; a killed process stops the other,
and the same commands resume."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import ROOT, write_tfds

# 160 train examples in two TFRecord files, 40 test: 10 steps of 16 per epoch, two eval batches of 20.
SHARDS, NUM_TEST = (80, 80), 40
FLAGS = ["--batch_size=16", "--eval_batch_size=20", "--log_every_steps=5", "--compilation_cache_dir="]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int = 1, **extra) -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "JAX_PLATFORMS": "cpu", **extra}
    env.pop("XLA_FLAGS", None)
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _mnist(workdir, data_dir, *flags) -> list[str]:
    return [sys.executable, "-m", "experiments.mnist", f"--workdir={workdir}", f"--data_dir={data_dir}",
            *FLAGS, *flags]


def _processes(workdir, data_dir, *flags, port=None) -> list[list[str]]:
    port = port or _free_port()
    return [_mnist(workdir, data_dir, f"--coordinator_address=localhost:{port}", "--num_processes=2",
                   f"--process_id={i}", *flags) for i in range(2)]


def _start(commands, **env) -> list[subprocess.Popen]:
    return [subprocess.Popen(c, cwd=ROOT, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for c in commands]


def _finish(procs, timeout=240) -> list[tuple[int, str, str]]:
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        outcomes.append((proc.returncode, out, err))
    return outcomes


def _params(workdir) -> dict:
    """The exported parameters of the run in ``workdir`` (written by process 0), flattened by path."""
    import jax
    from flax import serialization

    with open(os.path.join(workdir, "export", "variables.msgpack"), "rb") as f:
        params = serialization.msgpack_restore(f.read())["params"]
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def _records(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tfds(str(tmp_path_factory.mktemp("tfds")), shard_lengths=SHARDS, num_test=NUM_TEST)


def test_two_processes_end_with_the_parameters_of_one_process_on_as_many_devices(tmp_path, data_dir):
    """Two processes of one CPU device each, streaming their halves of every batch, against one process with
    two devices reading from memory: the same parameters (rtol 2e-4, atol 2e-5) and the same evaluations."""
    two = _start(_processes(tmp_path / "two", data_dir, "--epochs=1"), CNN_JAX_INPUT="stream")
    one = _finish(_start([_mnist(tmp_path / "one", data_dir, "--epochs=1")], devices=2, CNN_JAX_INPUT="memory"))
    (code, _, err), = one
    assert code == 0, err[-3000:]
    for i, (code, out, err) in enumerate(_finish(two)):
        assert code == 0, f"process {i}: {err[-3000:]}"
        assert "streaming from disk tfds mnist" in err
        assert f"process {i} of 2 joined the run at localhost:" in err
        assert ("results in" in out) == (i == 0) and ("process 0 wrote the results" in out) == (i == 1)
    a, b = _params(tmp_path / "one"), _params(tmp_path / "two")
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=2e-4, atol=2e-5, err_msg=name)
    records = _records(tmp_path / "two")  # written by process 0 alone: no record twice
    assert len({(r["kind"], r["step"]) for r in records}) == len(records)
    evals = [[r["test_accuracy"] for r in _records(tmp_path / d) if r["kind"] == "eval"] for d in ("one", "two")]
    assert len(evals[0]) == 1 and evals[0] == pytest.approx(evals[1], abs=1 / NUM_TEST + 1e-9)


@pytest.mark.parametrize("flags,message", [
    (["--process_id=2"], "error: process_id=2 must be in [0, num_processes=2)."),
    (["--process_id=1", "--initialization_timeout_s=5"],
     "error: cannot reach the coordinator at localhost:{port} within the 5 s initialization timeout"),
])
def test_bad_multiprocess_input_is_one_clear_error_line(tmp_path, data_dir, flags, message):
    port = _free_port()  # nothing listens there
    command = _mnist(tmp_path, data_dir, f"--coordinator_address=localhost:{port}", "--num_processes=2", *flags)
    start = time.monotonic()
    proc = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert message.format(port=port) in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - start < 60


def test_a_global_batch_not_divisible_by_the_processes_is_one_clear_error(tmp_path, data_dir):
    outcomes = _finish(_start(_processes(tmp_path, data_dir, "--batch_size=15")), timeout=120)
    for code, _, err in outcomes:  # each refuses it at the same point, before any data, and leaves without waiting
        assert code == 1, err[-3000:]
        assert "--batch_size 15 is not divisible by the 2 devices of 2 processes: use a multiple of 2" in err


def _kill_when(procs, victim: int, line_part: str, timeout=180):
    """Kills process ``victim`` once process 0 logs a line containing ``line_part``; returns the time."""
    deadline = time.monotonic() + timeout
    for line in procs[0].stderr:
        if line_part in line:
            break
        assert time.monotonic() < deadline, "the run never got there"
    os.kill(procs[victim].pid, signal.SIGKILL)
    return time.monotonic()


@pytest.mark.slow
def test_a_killed_process_stops_the_other_and_the_same_commands_resume(tmp_path, data_dir):
    """kill -9 process 0, then (in the resumed run) process 1: the other stops with a message within 60 s,
    and the same two commands then resume and finish the run."""
    commands = _processes(tmp_path / "run", data_dir, "--epochs=3", "--checkpoint_every_steps=4")
    for victim, at in ((0, "epoch 1/3"), (1, "epoch 2/3")):
        procs = _start(commands)
        killed = _kill_when(procs, victim, at)
        survivor = procs[1 - victim]
        survivor.wait(timeout=60)
        stopped = time.monotonic() - killed
        err = survivor.stderr.read()
        procs[victim].wait()
        assert survivor.returncode != 0 and stopped < 60, (survivor.returncode, stopped)
        assert ("another task died" in err or "Gloo" in err), err[-3000:]
    resumed = _finish(_start(commands))
    for i, (code, _, err) in enumerate(resumed):
        assert code == 0, f"process {i}: {err[-3000:]}"
        assert "resuming from step" in err
    records = _records(tmp_path / "run")
    assert [r["epoch"] for r in records if r["kind"] == "eval"] == [1, 2, 3]
