"""The README's front door cannot rot: its Python example runs and prints what the README says it prints, its two
commands come first and the test command is the one CI runs, its package table names every package, and every
path its Layout and links name exists."""
from __future__ import annotations

import contextlib
import io
import os
import re
import runpy

from helpers import ROOT


def readme() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def blocks(language: str) -> list:
    """The README's fenced code blocks of `language` ("" for a plain fence), in order, as (the line number of
    their first line, their text)."""
    found, fence = [], None
    for number, line in enumerate(readme().splitlines(keepends=True), start=1):
        if fence is None and line.startswith("```"):
            fence = (line[3:].strip(), number + 1, [])
        elif fence is not None and line.rstrip() == "```":
            if fence[0] == language:
                found.append((fence[1], "".join(fence[2])))
            fence = None
        elif fence is not None:
            fence[2].append(line)
    return found


def section(title: str) -> str:
    text = readme()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def test_the_python_example_runs_and_prints_what_the_readme_says(tmp_path):
    (_, example), = blocks("python")
    (_, printed), = blocks("text")
    assert len(example.strip().splitlines()) <= 12, "the front door's example stays short"
    script = tmp_path / "readme_example.py"
    script.write_text(example)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        runpy.run_path(str(script))
    assert output.getvalue() == printed


def test_the_two_commands_come_first_and_the_test_command_is_what_ci_runs():
    (first_line, setup_and_mnist), (_, tests) = blocks("bash")[:2]
    assert first_line <= 30
    assert setup_and_mnist.strip().endswith("python -m experiments.mnist --workdir=runs/mnist")
    assert "pip install -r requirements.txt -e ." in setup_and_mnist
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read().splitlines()
    ci_command = ci[ci.index("# The README's test command:") + 1]
    assert tests.strip() == ci_command.replace("pip install -q ", "pip install ")  # CI installs quietly


def test_the_package_table_names_every_package_once():
    rows = re.findall(r"^\| `cnn_jax\.(\w+)` \|", section("Packages"), re.MULTILINE)
    packages = sorted(name for name in os.listdir(os.path.join(ROOT, "cnn_jax"))
                      if os.path.exists(os.path.join(ROOT, "cnn_jax", name, "__init__.py")))
    assert sorted(rows) == packages
    assert len(rows) == len(set(rows))


def test_every_path_the_layout_and_the_links_name_exists():
    (_, layout), = [block for block in blocks("") if "cnn_jax/ops" in block[1]]
    named = re.findall(r"(?:^|\s)((?:\.ci|cnn_jax|experiments|scripts|benchmarks|tests)[\w./]*)", layout)
    assert len(named) >= 15
    linked = re.findall(r"\]\(([^)#]+)\)", readme())
    assert "BENCHMARKS.md" in linked
    for path in named + linked:
        assert os.path.exists(os.path.join(ROOT, path.rstrip(":"))), path


def test_the_scripts_the_readme_runs_exist():
    for script in set(re.findall(r"python ((?:scripts|benchmarks)/\w+\.py)", readme())):
        assert os.path.exists(os.path.join(ROOT, script)), script
    for module in set(re.findall(r"python -m (experiments\.\w+)", readme())):
        assert os.path.exists(os.path.join(ROOT, *module.split("."))) or os.path.exists(
            os.path.join(ROOT, *module.split(".")) + ".py"), module
