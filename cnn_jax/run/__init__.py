"""What an experiment does around the engine: its config, the process setup, the workdir, the run and its report.

An experiment is a recipe, a function returning an `Experiment` (or a subclass), and a thin main::

    from cnn_jax import run

    def recipe() -> run.Experiment:
        return run.Experiment(model="simple_cnn", data=run.DataConfig("mnist", batch_size=64),
                              train=run.TrainConfig(epochs=3))

    if __name__ == "__main__":
        run.main(recipe)

`main` sets up the process (`setup_process`: huge pages, compiler memory, the compilation cache,
`jax.distributed`), makes every setting a flag, and runs `train_experiment`: it checks what needs no data,
claims the workdir (`workdir`, `lock`), reads the data, trains with `cnn_jax.train` and writes the report
(`report`). The files it keeps are named in `cnn_jax.workdir_files`. From Python, `train_experiment(config)`
runs a config without flags or process setup.

The names below are imported on first access, so that `from cnn_jax import run` stays light enough to come
before the process setup.
"""
from cnn_jax.lazy import lazy_names

_SOURCES = {
    "command": ("PREEMPTED_EXIT_CODE", "describe_os_error", "execute"),
    "config": ("AugmentConfig", "DataConfig", "Experiment", "Run", "TrainConfig", "Training"),
    "entry": ("main", "process_settings"),
    "experiment": ("check_batch_sizes", "train_experiment", "train_model"),
    "lock": ("WorkdirBusy", "locked"),
    "normalization": ("normalized",),
    "process": ("Process", "setup_process"),
    "report": ("summary", "write_figures", "write_report"),
    "workdir": ("SettingsChanged", "check_workdir", "claim", "read_settings", "write_settings"),
}
__all__, __getattr__, __dir__ = lazy_names(__name__, _SOURCES)
