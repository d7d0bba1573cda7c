"""kill -9 at random points, then the same command until it finishes: every run must end as the uninterrupted one.

    python benchmarks/kill_resume.py --runs=5 --workdir=/tmp/kill_resume --data_dir=$TFDS_DATA_DIR

Runs a short MNIST command (`--command_flags`) once uninterrupted, then `--runs` times with a SIGKILL at a time
drawn uniformly over the uninterrupted run's duration (seeded), one more kill right after an evaluation is
logged (the checkpoint write that follows it), and one as soon as results.json exists (the export that follows
it). Each killed workdir is rerun with the same command until it exits 0; then its test evaluations must equal
the uninterrupted run's bit for bit, its metrics must hold each record once, and its export must load. Prints one
line per run and exits 1 if any differs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Optional

from absl import app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cnn_jax import cli  # noqa: E402


@dataclasses.dataclass(frozen=True)
class KillResume:
    """How many kills, where, and of which command.

    Attributes:
      workdir: directory for the runs' workdirs.
      runs: kills at random times.
      seed: seed of the kill times.
      data_dir: TFDS data dir holding mnist.
      command_flags: flags of the experiments.mnist command that is killed and rerun.
    """
    workdir: Optional[str] = None
    runs: int = 5
    seed: int = 0
    data_dir: Optional[str] = None
    command_flags: tuple[str, ...] = ("--epochs=3", "--num_train_examples=1024", "--batch_size=32",
                                      "--checkpoint_every_steps=7", "--log_every_steps=8",
                                      "--progress_bar=false", "--tensorboard=false")


def command(config: KillResume, workdir: str) -> list[str]:
    data = [f"--data_dir={config.data_dir}"] if config.data_dir else []
    return [sys.executable, "-m", "experiments.mnist", f"--workdir={workdir}", *data, *config.command_flags]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_killed(argv: list[str], workdir: str, after_s: Optional[float] = None, on_line: Optional[str] = None,
               on_file: Optional[str] = None) -> bool:
    """Starts `argv` and SIGKILLs it after `after_s` seconds, at the first stderr line containing `on_line`, or
    once `workdir/on_file` exists; True if it was killed (False: it finished first)."""
    start = time.time()
    with subprocess.Popen(argv, cwd=ROOT, env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          text=True) as proc:
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
        reader.start()
        while proc.poll() is None:
            due = ((after_s is not None and time.time() - start >= after_s)
                   or (on_line is not None and any(on_line in line for line in list(lines)))
                   or (on_file is not None and os.path.exists(os.path.join(workdir, on_file))))
            if due:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.02)
    return False


def finish(argv: list[str], attempts: int = 5) -> None:
    """Reruns `argv` until it exits 0."""
    for _ in range(attempts):
        proc = subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True)
        if proc.returncode == 0:
            return
    raise RuntimeError(f"{' '.join(argv)} did not finish in {attempts} reruns: {proc.stderr[-2000:]}")


def evaluations(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steps = [(r["kind"], r["step"]) for r in records]
    if len(steps) != len(set(steps)):
        raise AssertionError(f"{workdir}/metrics.jsonl repeats records")
    return [{k: v for k, v in r.items() if k.startswith("test_")} for r in records if r["kind"] == "eval"]


def check(workdir: str, expected: list[dict]) -> str:
    """'same' if `workdir` ended as the uninterrupted run and its export loads, else what differs."""
    from cnn_jax import export

    got = evaluations(workdir)
    export.load_export(workdir)
    return "same" if got == expected else f"DIFFERENT: {got} != {expected}"


def main(argv) -> None:
    del argv
    config = cli.parse(KillResume())
    os.makedirs(config.workdir, exist_ok=True)
    straight = os.path.join(config.workdir, "uninterrupted")
    start = time.time()
    finish(command(config, straight))
    duration = time.time() - start
    expected = evaluations(straight)
    rng = random.Random(config.seed)
    kills = [("random", {"after_s": rng.uniform(0.2, 1.0) * duration}) for _ in range(config.runs)]
    kills += [("checkpoint write", {"on_line": "epoch 1/"}), ("export", {"on_file": "results.json"})]
    failed = 0
    for number, (kind, when) in enumerate(kills):
        workdir = os.path.join(config.workdir, f"killed_{number}")
        killed = run_killed(command(config, workdir), workdir, **when)
        finish(command(config, workdir))
        outcome = check(workdir, expected)
        failed += outcome != "same"
        detail = f"{when['after_s']:.1f} s of {duration:.1f} s" if "after_s" in when else kind
        print(f"run {number}: kill at {detail} ({'killed' if killed else 'finished first'}), resumed: {outcome}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    cli.define_flags(KillResume(), required=("workdir",))
    app.run(main)
