"""`experiments/visualize.py`: a gallery for a run's export on the test images of the run's dataset, with its feature
page; the experiments' flags checked before anything loads (visualize, faithfulness)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT
from PIL import Image

from cnn_jax import export
from cnn_jax.models import get_model

CLASSES = ("circles", "stripes")


def _visualize(*args):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "experiments.visualize", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)


def _run_with_export(root):
    """A workdir as a transfer run on an image folder leaves it (flags.json, export/), with a random cnn3."""
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / "photos" / name).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(root / "photos" / name / f"{i}.png")
    workdir = root / "run"
    workdir.mkdir()
    (workdir / "flags.json").write_text(json.dumps({"dataset": str(root / "photos"), "image_size": 32}))
    shapes = jax.eval_shape(get_model("cnn3", len(CLASSES)).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    variables = jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(np.float32) if s.ndim == 1
                             else rng.normal(0, 0.2, s.shape).astype(np.float32), shapes)
    export.save_export(str(workdir), "cnn3", {}, variables, CLASSES, (32, 32, 3))
    return workdir


@pytest.mark.slow
def test_gallery_of_the_runs_test_images(tmp_path):
    workdir = _run_with_export(tmp_path)
    proc = _visualize(f"--workdir={workdir}", "--num_images=3", "--ig_steps=2", "--smoothgrad_samples=2",
                      "--visualization_steps=2", "--feature_steps=2", "--copies=2", "--channels=0,5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = workdir / "gallery" / "index.html"
    assert f"gallery of 2 images: {index} (and features.html)" in proc.stdout  # the test split: 20% of 10 images
    features = (workdir / "gallery" / "features.html").read_text()
    assert 'src="feature_channels.png"' in features and 'src="feature_classes.png"' in features
    assert '<a href="features.html">' in index.read_text()
    page = index.read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert set(images) == {"attributions.png", "filters.png", "feature_maps.png", "class_visualizations.png"}
    assert all((workdir / "gallery" / image).stat().st_size > 1000 for image in images)
    rows = re.findall(r"<tr[^>]*><td>\d+</td><td>(\w+)</td><td>(\w+)</td>", page)
    assert len(rows) == 2 and all(true in CLASSES and predicted in CLASSES for true, predicted in rows)


def test_a_workdir_without_export_is_one_clear_error(tmp_path):
    proc = _visualize(f"--workdir={tmp_path}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"error: the export {tmp_path / 'export'} does not exist" in proc.stderr


def test_bad_flags_are_one_clear_error_before_anything_loads(tmp_path):
    proc = _visualize(f"--workdir={tmp_path}", "--channels=0,x")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "error: --channels=0,x must be comma-separated indices" in proc.stderr
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "experiments.faithfulness", f"--workdir={tmp_path}",
                           "--methods=gradient,saliencey"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "error: unknown attribution method 'saliencey': use one or more of gradient, " in proc.stderr
