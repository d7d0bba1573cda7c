"""kill -9 in the default suite: a small run killed once its metrics file shows a step the test chooses, then the
same command again, ends exactly as the same command never interrupted (every array of the final train state
bit for bit, every metrics record once and equal but for its timings).

The run (this file as a script) trains a tiny CNN on generated 8x8 images with the training engine
(``train_and_evaluate``): 2 epochs of 6 steps, a checkpoint every 4 steps and at each epoch end, a metrics record
every step. Its training batches arrive ``PAUSE_S`` apart, so that the kill lands within a step of the one chosen,
between checkpoints: the resumed run must redo the steps after its last checkpoint and drop their records.
The real command, ``experiments.mnist``, killed during a checkpoint and during the export, is the slow
test_experiments.py::test_killed_run_resumes_with_the_same_command.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCHS, STEPS_PER_EPOCH, CHECKPOINT_EVERY = 2, 6, 4
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
KILL_AT_STEP = 9  # epoch 2, a step after the checkpoint of step 8
PAUSE_S = 0.1
FINAL = "final_state.npz"  # written by the run when it ends
TIMINGS = ("images_per_sec", "elapsed_s")


def command(workdir) -> list:
    return [sys.executable, __file__, str(workdir)]


def start(workdir, log) -> subprocess.Popen:
    """The command on ``workdir``, its log (stderr) going to the file ``log``."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log, "w") as stderr:
        return subprocess.Popen(command(workdir), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def finish(proc: subprocess.Popen, log) -> str:
    """Waits for ``proc``, which must exit 0; returns its log."""
    proc.wait(timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return text


def records(workdir) -> list:
    from cnn_jax.train.metrics import read_records

    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in read_records(str(workdir / "metrics.jsonl"))]


def checkpoint_steps(workdir) -> list:
    return sorted(int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit())


def test_killed_at_a_chosen_step_and_rerun_ends_as_the_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    uninterrupted = start(straight, tmp_path / "straight.log")  # alongside the killed run, to wait once for both
    run = start(killed, tmp_path / "killed.log")
    deadline = time.monotonic() + 240
    while run.poll() is None and not [r for r in records(killed) if r["kind"] == "train"
                                      and r["step"] >= KILL_AT_STEP]:
        assert time.monotonic() < deadline, "the run never reached the step to kill it at"
        time.sleep(0.01)
    os.kill(run.pid, signal.SIGKILL)
    run.wait(timeout=60)
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    shown = max(r["step"] for r in records(killed) if r["kind"] == "train")
    saved = checkpoint_steps(killed)
    assert not (killed / FINAL).exists() and KILL_AT_STEP <= shown < TOTAL_STEPS
    assert saved and max(saved) < TOTAL_STEPS, saved  # killed mid-run, with steps since its last checkpoint

    log = finish(start(killed, tmp_path / "rerun.log"), tmp_path / "rerun.log")
    resumed = re.search(r"resuming from step (\d+)", log)
    assert resumed and int(resumed.group(1)) == max(saved), log[-3000:]
    finish(uninterrupted, tmp_path / "straight.log")

    got, want = records(killed), records(straight)
    assert len({(r["kind"], r["step"]) for r in got}) == len(got)  # no record twice
    assert got == want
    with np.load(killed / FINAL) as resumed_state, np.load(straight / FINAL) as straight_state:
        assert sorted(resumed_state.files) == sorted(straight_state.files)
        for name in straight_state.files:
            assert np.array_equal(resumed_state[name], straight_state[name]), name


def main(workdir: str) -> None:
    """One run into ``workdir``, resuming what is there; writes the final train state to ``FINAL``."""
    import flax.linen as nn
    import jax

    from cnn_jax import data
    from cnn_jax.train import TrainConfig, train_and_evaluate

    class TinyCNN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3))(x)))
            x = nn.Dropout(0.1, deterministic=not train)(x.reshape(x.shape[0], -1))
            return nn.Dense(4)(x)

    class Paced:
        """The dataset, its training batches ``PAUSE_S`` apart."""

        def __init__(self, dataset):
            self._dataset, self.info, self.steps_per_epoch = dataset, dataset.info, dataset.steps_per_epoch

        def train_batches(self, epoch, start_step=0):
            for batch in self._dataset.train_batches(epoch, start_step):
                time.sleep(PAUSE_S)
                yield batch

        def __getattr__(self, name):
            return getattr(self._dataset, name)

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 128)
    images = rng.integers(0, 256, (128, 8, 8, 1)).astype(np.uint8)
    dataset = data.from_arrays(data.DataConfig("tiny", batch_size=16, eval_batch_size=32), "abcd",
                               (images[:96], labels[:96]), (images[96:], labels[96:]))
    assert dataset.steps_per_epoch == STEPS_PER_EPOCH
    config = TrainConfig(epochs=EPOCHS, learning_rate=0.05, checkpoint_every_steps=CHECKPOINT_EVERY,
                         log_every_steps=1, progress_bar=False, tensorboard=False)
    state = train_and_evaluate(TinyCNN(), Paced(dataset), config, workdir).state
    arrays = {jax.tree_util.keystr(path): np.asarray(leaf)
              for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}
    np.savez(os.path.join(workdir, FINAL), **arrays)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("cnn_jax").setLevel(logging.INFO)  # "resuming from step N"
    main(sys.argv[1])
