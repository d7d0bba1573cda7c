"""Tests of cnn_jax.settings and cnn_jax.cli: one declaration per setting, flags generated from it.

Also parses every `python -m` command in README.md, RESULTS.md and BENCHMARKS.md and checks that each
flag it passes is one the module defines, with a value the flag accepts.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import re
import shlex
from typing import Literal, Optional

import pytest
from absl import flags
from helpers import ROOT

from cnn_jax import cli, settings
from cnn_jax.data import DataConfig
from cnn_jax.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class Inner:
    """A section.

    Attributes:
      rate: a rate
        over two lines.
      seed: the inner seed.
      names: some names.
      size: a size.
    """
    rate: float = 0.5
    seed: int = 0
    names: tuple[str, ...] = ("a",)
    size: Optional[tuple[int, int]] = None


@dataclasses.dataclass(frozen=True)
class Outer:
    """The whole.

    Attributes:
      inner: the section.
      seed: the outer seed.
      mode: a choice.
      log_every: bookkeeping.
    """
    inner: Inner = Inner()
    seed: int = 0
    mode: Literal["x", "y"] = "x"
    log_every: int = settings.bookkeeping(10)


def fresh_flags(recipe, argv, **kwargs):
    values = flags.FlagValues()
    cli.define_flags(recipe, flag_values=values, **kwargs)
    values(["prog", *argv])
    return values


def test_flags_are_the_flat_field_names_with_the_recipe_defaults_and_the_docstring_help():
    values = fresh_flags(Outer(mode="y"), [])
    assert set(values) >= {"rate", "seed", "names", "size", "mode", "log_every"}
    assert values["rate"].help == "a rate over two lines."
    assert values["seed"].help == "the inner seed.; the outer seed."  # one flag for both sections
    assert values["mode"].value == "y" and values["mode"].default == "y"
    assert cli.parse(Outer(mode="y"), values) == Outer(mode="y")  # nothing given: the recipe itself


def test_only_given_flags_override_and_a_shared_name_sets_every_section():
    values = fresh_flags(Outer(), ["--seed=3", "--names=p,q", "--size=224", "--rate=0.25"])
    assert cli.given(Outer, values) == {"seed": 3, "names": ("p", "q"), "size": (224, 224), "rate": 0.25}
    other_recipe = Outer(mode="y", log_every=5)
    parsed = cli.parse(other_recipe, values)
    assert parsed == Outer(inner=Inner(rate=0.25, seed=3, names=("p", "q"), size=(224, 224)), seed=3,
                           mode="y", log_every=5)
    assert fresh_flags(Outer(), ["--size=32,48"])["size"].value == (32, 48)


@pytest.mark.parametrize("argv", [["--size=big"], ["--size=1,2,3"], ["--mode=z"], ["--rate=fast"]])
def test_a_flag_value_of_the_wrong_type_is_refused_by_the_parser(argv):
    with pytest.raises(flags.IllegalFlagValueError):
        fresh_flags(Outer(), argv)


def test_a_setting_without_a_docstring_line_cannot_become_a_flag():
    @dataclasses.dataclass(frozen=True)
    class Undocumented:
        """No attributes section."""
        speed: int = 1

    with pytest.raises(TypeError, match="'speed' of Undocumented has no line in the class docstring"):
        cli.define_flags(Undocumented(), flag_values=flags.FlagValues())


def test_identity_leaves_out_bookkeeping_and_absent_settings_read_as_their_defaults():
    assert settings.identity(Outer()) == {"rate": 0.5, "seed": 0, "names": ["a"], "size": None, "mode": "x"}
    assert settings.flatten(Outer())["log_every"] == 10
    assert settings.absent_defaults(Outer)["rate"] == 0.5
    with pytest.raises(ValueError, match="shared by several sections, which must agree"):
        settings.flatten(Outer(seed=1))
    with pytest.raises(ValueError, match=r"unknown settings \['speed'\]"):
        settings.replace(Outer(), speed=2)


def test_the_engine_and_data_configs_document_every_field_and_mark_bookkeeping():
    for config_type in (TrainConfig, DataConfig):
        docs = settings.attribute_docs(config_type)
        assert {leaf.name for leaf in settings.leaves(config_type)} <= set(docs), config_type
    bookkeeping = {leaf.name for leaf in settings.leaves(TrainConfig) if leaf.bookkeeping}
    assert {"log_every_steps", "keep_checkpoints", "progress_bar", "tensorboard"} <= bookkeeping
    assert "learning_rate" not in bookkeeping


def test_an_invalid_value_is_refused_when_the_config_is_rebuilt():
    from experiments import mnist

    values = flags.FlagValues()
    cli.define_flags(mnist.recipe(), flag_values=values)
    values(["prog", "--learning_rate=-1", "--workdir=w"])
    with pytest.raises(ValueError, match="TrainConfig.learning_rate=-1.0 is invalid"):
        cli.parse(mnist.recipe(), values)


# --- every documented command ---------------------------------------------------------------------------------

RECIPES = {"experiments.mnist": "recipe", "experiments.cifar10": "recipe", "experiments.cifar10_fast": "recipe",
           "experiments.transfer": "recipe", "experiments.compare": "recipe"}


def documented_commands():
    """(file, module, argv) of every `python -m experiments.X ...` command in the documents."""
    found = []
    for name in ("README.md", "RESULTS.md", "BENCHMARKS.md"):
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            text = f.read().replace("\\\n", " ")
        for match in re.finditer(r"python -m (experiments\.\w+)([^`\n|]*)", text):
            module, rest = match.group(1), match.group(2)
            try:
                words = shlex.split(rest.split("#")[0])
            except ValueError:
                words = rest.split()
            argv = [w for w in words if w.startswith("--")]
            found.append((name, module, argv))
    return found


def test_the_documents_hold_commands_of_every_training_experiment():
    modules = {module for _, module, _ in documented_commands()}
    assert set(RECIPES) <= modules


@pytest.mark.parametrize("document,module,argv", documented_commands(),
                         ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60])
def test_every_documented_command_passes_flags_its_experiment_defines(document, module, argv):
    if module not in RECIPES:
        pytest.skip(f"{module} is not a training experiment")
    experiment = importlib.import_module(module)
    recipe = getattr(experiment, RECIPES[module])()
    values = flags.FlagValues()
    cli.define_flags(recipe, flag_values=values)
    argv = [a.split("=", 1)[0] + "=x" if a.endswith("=") and "workdir" in a else a for a in argv]
    values(["prog", *[a for a in argv if not re.search(r"=(\.\.\.|<|\$|N\b|ARM)", a)]])  # placeholders
    cli.parse(recipe, values)  # a documented command whose values the config refuses fails here


def test_every_test_the_readme_cites_exists():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        cited = set(re.findall(r"(\w+/test_\w+\.py)::(test_\w+)", f.read()))  # tests/<package>/test_*.py
    assert len(cited) > 30
    for file, name in sorted(cited):
        with open(os.path.join(ROOT, "tests", file), encoding="utf-8") as f:
            assert re.search(rf"^def {name}\(", f.read(), re.MULTILINE), f"{file}::{name}"


def test_every_entry_point_declares_its_flags_through_cnn_jax_cli():
    """One way to declare flags: experiments and scripts define them from a settings dataclass (a recipe's through
    `cnn_jax.run.main`), never with argparse or absl's DEFINE_* by hand."""
    entry_points = [os.path.join(folder, name) for folder in ("experiments", "scripts", "benchmarks")
                    if os.path.isdir(os.path.join(ROOT, folder))
                    for name in sorted(os.listdir(os.path.join(ROOT, folder))) if name.endswith(".py")]
    with_flags = []
    for path in entry_points:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            source = f.read()
        assert not re.search(r"\bimport argparse\b|flags\.DEFINE_\w+\(", source), path
        if "define_flags(" in source or "run.main(recipe" in source:
            with_flags.append(path)
    assert len(with_flags) >= 15, with_flags
