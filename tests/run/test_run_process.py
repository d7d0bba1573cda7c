"""`cnn_jax.run.setup_process` and the entry point around it: the process is set up by one explicit call, first thing,
and a recipe of one's own runs with the installed package alone (no `experiments/`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import ROOT, SHARED_DATA

from cnn_jax import huge_pages, run
from cnn_jax.workdir_files import RESULTS_FILE

SUPPORTED = huge_pages.environment({}) is not None  # glibc 2.35+ and transparent huge pages not "never"

# Prints a line before the setup (twice when the setup re-executes the program) and what the setup did.
PROBE = textwrap.dedent("""
    import json, os, sys
    print("started", "jax" in sys.modules, flush=True)
    from cnn_jax.run import Process, setup_process
    setup_process(Process(**json.loads(sys.argv[1])))
    import jax
    from cnn_jax import freed_memory
    print(json.dumps({"tunables": os.environ.get("GLIBC_TUNABLES"), "cache": jax.config.jax_compilation_cache_dir,
                      "released": freed_memory.release_after_compiles.cache_info().misses == 1}))
""")


def _probe(tmp_path, settings: dict, **env) -> tuple[list[str], dict]:
    env = {**{k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"},
           "CNN_JAX_CACHE_DIR": str(tmp_path / "caches"), "PYTHONPATH": ROOT, **env}
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(settings)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    *starts, done = proc.stdout.splitlines()
    return starts, json.loads(done)


def test_the_setup_reexecutes_once_before_jax_and_sets_up_the_cache_and_the_memory_release(tmp_path):
    starts, done = _probe(tmp_path, {})
    assert starts == ["started False"] * (2 if SUPPORTED else 1)  # the re-execution came before any JAX import
    assert (done["tunables"] == huge_pages.TUNABLE) if SUPPORTED else done["tunables"] is None
    assert done["cache"] == str(tmp_path / "caches" / "jax") and done["released"]


def test_each_piece_of_the_setup_has_its_off_switch(tmp_path):
    starts, done = _probe(tmp_path, {"huge_pages": False, "compilation_cache_dir": "",
                                     "release_compiler_memory": False})
    assert starts == ["started False"] and done["tunables"] is None
    assert not done["cache"] and not done["released"]


def test_a_compilation_cache_others_can_write_is_not_used(tmp_path):
    """XLA loads compiled programs from its cache: one in a directory that group or others can write is off, with
    a warning naming the fix, and JAX is not pointed at it."""
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    starts, done = _probe(tmp_path, {"huge_pages": False, "compilation_cache_dir": str(open_dir / "xla")})
    assert not done["cache"]


def test_a_hugetlb_tunable_the_user_set_is_kept(tmp_path):
    starts, done = _probe(tmp_path, {}, GLIBC_TUNABLES="glibc.malloc.hugetlb=0")
    assert starts == ["started False"] and done["tunables"] == "glibc.malloc.hugetlb=0"


def test_the_process_flags_are_read_before_the_others_exist():
    argv = ["prog", "--workdir=w", "--epochs=3", "--nohuge_pages", "--num_processes=2", "--compilation_cache_dir="]
    assert run.process_settings(argv) == run.Process(huge_pages=False, num_processes=2, compilation_cache_dir="")
    assert run.process_settings(["prog", "--num_processes=two"]) == run.Process()  # the full parse reports it


def test_a_recipe_module_imports_no_jax_before_its_main_runs():
    code = ("import sys, experiments.mnist, experiments.cifar10; "
            "print(sorted(m for m in ('jax', 'flax') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0 and proc.stdout.split() == ["[]"], proc.stderr[-3000:]


RECIPE = textwrap.dedent("""
    '''A recipe of one's own, beside an installed cnn_jax.'''
    from cnn_jax import run

    def recipe():
        return run.Experiment(model="simple_cnn", data=run.DataConfig("mnist", batch_size=32, eval_batch_size=500,
                                                                      num_train_examples=64),
                              train=run.TrainConfig(epochs=1, learning_rate=1e-3, optimizer="adam"))

    if __name__ == "__main__":
        run.main(recipe)
""")


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, "mnist")), reason="needs the offline MNIST")
def test_an_installed_cnn_jax_runs_a_recipe_of_ones_own(tmp_path):
    site = tmp_path / "site"  # what pip installs: the cnn_jax package, and no experiments/
    site.mkdir()
    (site / "cnn_jax").symlink_to(os.path.join(ROOT, "cnn_jax"))
    (tmp_path / "my_recipe.py").write_text(RECIPE)
    env = {**os.environ, "PYTHONPATH": str(site), "TFDS_DATA_DIR": SHARED_DATA}
    proc = subprocess.run([sys.executable, "my_recipe.py", f"--workdir={tmp_path / 'run'}", "--compilation_cache_dir=",
                           "--log_every_steps=1", "--progress_bar=false"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / RESULTS_FILE).read_text())
    assert results["steps"] == 2 and results["flags"]["model"] == "simple_cnn"
    assert "test accuracy" in proc.stdout


@pytest.mark.parametrize("argv,expected", [([], "fast"), (["--kernels=portable"], "portable"),
                                           (["--kernels=separate"], "separate")])
def test_the_kernels_flag_sets_the_mode_the_run_traces_in(tmp_path, argv, expected):
    """`--kernels` is the one flag of `ops.kernels`: the run (everything `train_experiment` does) sees its mode,
    and the process's mode is back as it was afterwards."""
    from absl import flags

    from cnn_jax import cli
    from cnn_jax.ops import switch
    from cnn_jax.run import command
    from experiments import mnist

    seen = []

    def train_experiment(config):
        seen.append(switch.mode())
        return {}

    recipe = mnist.recipe()
    values = flags.FlagValues()
    cli.define_flags(recipe, flag_values=values)
    values(["prog", f"--workdir={tmp_path}", *argv])
    command.execute(["prog"], recipe, train_experiment=train_experiment, report=lambda results, config: "",
                    flag_values=values)
    assert seen == [expected] and switch.mode() == "fast"
    assert values["kernels"].parser.enum_values == list(switch.MODES)  # the flag offers exactly the switch's modes
