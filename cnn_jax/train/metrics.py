"""Where training metrics go: `metrics.jsonl`, TensorBoard event files, and a progress bar.

Nothing here touches the device: the loop reads device metrics at log time and passes floats.
"""
from __future__ import annotations

import json
import math
import os
import sys

from cnn_jax.files import json_excerpt, write_atomically
from cnn_jax.train.events import EventFileWriter
from cnn_jax.workdir_files import METRICS_FILE, TENSORBOARD_DIR, entry_path


class MetricWriter:
    """Appends records (flat dicts with a "step") to `workdir/metrics.jsonl` and TensorBoard.

    Opening a workdir keeps only the records up to `resume_step` (the restored checkpoint's
    step; 0 for a fresh run): what was logged after the last checkpoint is replayed by the
    resumed run and would otherwise appear twice. `history` holds the kept records and every
    record written since. Numbers go to TensorBoard as scalars named by their keys.

    With `write=False` (the processes other than the first in a multi-host run) files are only
    read: `history` is still kept, so every process makes the same decisions from it.

    A `metrics.jsonl` or `tensorboard/` that is a symbolic link is refused (`cnn_jax.workdir_files`), neither
    read nor written through.
    """

    def __init__(self, workdir: str, resume_step: int = 0, tensorboard: bool = True,
                 write: bool = True):
        path, events = entry_path(workdir, METRICS_FILE), entry_path(workdir, TENSORBOARD_DIR)
        self.history = [r for r in read_records(path) if r["step"] <= resume_step]
        self._file = self._tensorboard = None
        if write:
            write_atomically(path, "".join(json.dumps(r) + "\n" for r in self.history))
            self._file = open(path, "a", encoding="utf-8")
            self._tensorboard = EventFileWriter(events) if tensorboard else None

    def write(self, record: dict) -> None:
        """Writes one record: {"kind": "train" | "eval", "step": int, ...numbers}.

        Evaluation records are fsynced at once; train records with the next `sync` or eval.
        """
        self.history.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
            if record.get("kind") == "eval":
                self.sync()
        if self._tensorboard is not None:
            self._tensorboard.write(record["step"], {
                key: value for key, value in record.items()
                if key not in ("kind", "step", "epoch") and isinstance(value, (int, float))})

    def sync(self) -> None:
        """Makes every record written so far durable (before a checkpoint that depends on them)."""
        if self._file is not None:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def read_records(path: str) -> list[dict]:
    """The records of a metrics.jsonl file ([] if absent). A line that is not JSON (a write cut short by a crash) is
    dropped with everything after it; a line that is JSON but no record (an object with an integer "step"), which
    the run never writes, is a ValueError naming the file and the line."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                break  # A write cut short by a crash: everything after it is suspect.
            if not (isinstance(record, dict) and isinstance(record.get("step"), int)):
                raise ValueError(f"{path} line {number} holds {json_excerpt(record)}, not a metrics record (an object "
                                 "with an integer \"step\"): restore the file, or delete that line, and rerun")
            records.append(record)
    return records


class ProgressBar:
    """A one-line bar on stderr: step, loss, images per second and time left.

    On a terminal the line redraws in place; otherwise (a log file) each update is a new line.
    """

    def __init__(self, total_steps: int, enabled: bool = True, stream=None, width: int = 24):
        self._total = total_steps
        self._enabled = enabled
        self._stream = stream or sys.stderr
        self._width = width
        self._inline = self._stream.isatty()

    def update(self, step: int, epoch: int, loss: float, images_per_sec: float,
               steps_per_sec: float) -> None:
        if not self._enabled:
            return
        filled = int(self._width * step / self._total)
        bar = "#" * filled + "." * (self._width - filled)
        eta = (self._total - step) / steps_per_sec if steps_per_sec > 0 else math.inf
        line = (f"epoch {epoch} [{bar}] {step}/{self._total} loss {loss:.4f} "
                f"{images_per_sec:,.0f} img/s ETA {_format_seconds(eta)}")
        self._stream.write(("\r" + line + "\x1b[K") if self._inline else line + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._enabled and self._inline:
            self._stream.write("\n")
            self._stream.flush()


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"

