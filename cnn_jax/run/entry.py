"""An experiment's `main`: `cnn_jax.run.main(recipe)` sets up the process, then runs the recipe as the flags change it.

It is light to import (no JAX), so that the process setup, which may re-execute the command
(`cnn_jax.run.setup_process`), comes before anything heavy is imported: a recipe module whose top imports only
`cnn_jax.run` and passes its recipe function (not its value) starts once.
"""
from __future__ import annotations

import functools
import logging
import sys
from typing import Callable, Optional, Sequence

from absl import app, flags
from absl import logging as absl_logging

from cnn_jax import cli
from cnn_jax.run.process import Process, setup_process


def main(recipe: Callable, train_experiment: Optional[Callable] = None,
         report: Optional[Callable[[dict, object], str]] = None) -> None:
    """The command of `recipe()` (a `cnn_jax.run.Training`): sets up the process from the flags that set it up,
    defines a flag for every setting (the recipe's values as defaults, --workdir required) and runs
    `cnn_jax.run.execute`; a process setting that cannot work prints one `error:` line and exits 1."""
    absl_logging.use_absl_handler()  # the setup's own lines (e.g. "process 0 of 2 joined the run") are shown
    logging.getLogger("cnn_jax").setLevel(logging.INFO)
    try:
        setup_process(process_settings(sys.argv))
    except ValueError as error:
        sys.exit(f"error: {error}")
    from cnn_jax.run import command  # after the process setup, which may re-execute the command

    config = recipe()
    cli.define_flags(config, required=("workdir",))
    app.run(functools.partial(command.execute, recipe=config, train_experiment=train_experiment, report=report))


def process_settings(argv: Sequence[str]) -> Process:
    """The `Process` settings given in `argv`, read before the other flags exist (which need heavy imports);
    defaults where `argv` sets them wrongly, which the full parse then reports."""
    values = flags.FlagValues()
    cli.define_flags(Process(), flag_values=values)
    try:
        values(list(argv), known_only=True)
        return cli.parse(Process(), values)
    except (flags.Error, ValueError):
        return Process()
