"""The command around a run: flags in, one line out; a known failure is one `error:` line and exit status 1, a
signal that stopped the run at a checkpoint exits `PREEMPTED_EXIT_CODE`."""
from __future__ import annotations

import contextlib
import errno
import logging
import sys
import threading
from typing import Callable, Optional

from absl import app
from absl import logging as absl_logging

from cnn_jax import cli, ops
from cnn_jax.data import DatasetUnavailableError
from cnn_jax.run.config import Training
from cnn_jax.run.experiment import train_experiment as default_train_experiment
from cnn_jax.run.lock import WorkdirBusy
from cnn_jax.run.report import summary
from cnn_jax.train import CheckpointError, Preempted
from cnn_jax.train.sharding import exit_with_error

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped by a signal with a checkpoint saved; rerun to resume.
log = logging.getLogger(__name__)


def execute(argv, recipe: Training, train_experiment: Optional[Callable] = None,
            report: Optional[Callable[[dict, Training], str]] = None, flag_values=None) -> None:
    """Runs `train_experiment(config)` (default `cnn_jax.run.train_experiment`) on `recipe` as the flags (default:
    absl's global ones) change it and prints `report(results, config)` (default: `cnn_jax.run.report.summary`)."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # Quiets orbax's per-save INFO lines.
    logging.getLogger("absl").addFilter(_without_orbax_tracebacks)
    threading.excepthook = _log_thread_failure
    logging.getLogger("cnn_jax").setLevel(logging.INFO)
    try:
        config = cli.parse(recipe) if flag_values is None else cli.parse(recipe, flag_values)
        kernels = config.run.kernels
        with ops.kernels(kernels) if kernels else contextlib.nullcontext():
            results = (train_experiment or default_train_experiment)(config)
    except Preempted as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_CODE)
    except (ValueError, FloatingPointError, DatasetUnavailableError, WorkdirBusy, CheckpointError) as error:
        exit_with_error(f"error: {error}")  # a multi-process run leaves without waiting for the others
    except OSError as error:
        sys.exit(f"error: {describe_os_error(error)}")
    except KeyboardInterrupt:
        sys.exit("interrupted: run the same command again to resume from the latest checkpoint")
    print(report(results, config) if report else summary(results, config.run.workdir))


def _without_orbax_tracebacks(record: logging.LogRecord) -> bool:
    """Keeps orbax's background-thread errors to their one log line: the engine re-raises each as an error
    that says what to do, so their tracebacks would only bury it."""
    if "orbax" in record.pathname:
        record.exc_info = record.exc_text = None
    return True


def _log_thread_failure(args) -> None:
    """A background thread's failure as one log line: the main thread reports what it means."""
    log.warning("background thread %s failed: %s: %s", getattr(args.thread, "name", "?"),
                args.exc_type.__name__, args.exc_value)


def describe_os_error(error: OSError) -> str:
    """One line for a failed file operation: what, where, and what to do."""
    where = f" ({error.filename})" if error.filename else ""
    advice = {errno.ENOSPC: "free disk space or use a --workdir on another disk, then rerun to resume",
              errno.EFBIG: "the file size limit was reached: raise it (ulimit -f) or free space, then rerun",
              errno.EACCES: "fix the permissions or choose another path",
              errno.EROFS: "the filesystem is read-only: choose a writable --workdir",
              errno.ENOTDIR: "choose a directory path"}.get(error.errno, "check the path and rerun")
    return f"{error.strerror or error}{where}: {advice}"
