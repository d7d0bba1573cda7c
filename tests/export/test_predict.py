"""The export a run leaves for inference (`cnn_jax.export`) and `scripts/predict.py`, on a small random model."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT
from PIL import Image

from cnn_jax import data, export
from cnn_jax.models import get_model

CLASSES = ("cat", "dog", "fish")
SHAPE = (32, 32, 3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A workdir with the export of a cnn3 with random variables (3 classes, 32x32 RGB): (workdir, variables).
    The variables are drawn with numpy for the shapes `eval_shape` gives, so nothing is compiled."""
    workdir = tmp_path_factory.mktemp("run")
    shapes = jax.eval_shape(get_model("cnn3", len(CLASSES)).init, jax.random.key(0), jnp.zeros((1, *SHAPE)))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(np.float32) if s.ndim == 1
                             else rng.normal(0, 0.2, s.shape).astype(np.float32), shapes)
    export.save_export(str(workdir), "cnn3", {"dtype": jnp.bfloat16}, variables, CLASSES, SHAPE)
    return str(workdir), variables


def test_export_round_trip_pins_normalization_and_computes_in_float32(exported):
    workdir, variables = exported
    model, loaded, meta = export.load_export(workdir)
    assert (meta.model_name, meta.class_names, meta.image_shape, meta.image_size) == ("cnn3", CLASSES, SHAPE, (32, 32))
    default = get_model("cnn3", 3)
    assert meta.model_kwargs == {"mean": tuple(default.mean), "std": tuple(default.std)}
    assert model.dtype == jnp.float32 and model.mean == default.mean
    assert jax.tree.structure(loaded) == jax.tree.structure(variables)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)))


def test_missing_corrupt_or_mismatched_exports_are_clear_errors(exported, tmp_path):
    workdir, variables = exported
    with pytest.raises(export.ExportError, match="does not exist: a run writes it when training ends; rerun"):
        export.load_export(str(tmp_path))
    directory = tmp_path / "export"
    directory.mkdir()
    with pytest.raises(export.ExportError, match="is incomplete"):
        export.load_export(str(tmp_path))
    with open(os.path.join(workdir, "export", "meta.json")) as f:
        meta = json.load(f)
    (directory / "meta.json").write_text(json.dumps(meta)[:40])
    with pytest.raises(export.ExportError, match="corrupt export metadata .*JSONDecodeError"):
        export.load_export(str(tmp_path))
    (directory / "meta.json").write_text(json.dumps(meta))
    (directory / "variables.msgpack").write_bytes(b"\x93garbage")
    with pytest.raises(export.ExportError, match="variables.msgpack is not the file its meta.json recorded"):
        export.load_export(str(tmp_path))
    garbage_sum = {**meta, "sha256": {"variables.msgpack": hashlib.sha256(b"\x93garbage").hexdigest()}}
    (directory / "meta.json").write_text(json.dumps(garbage_sum))
    with pytest.raises(export.ExportError, match="corrupt or missing export variables"):
        export.load_export(str(tmp_path))
    (directory / "meta.json").write_text(json.dumps({**meta, "class_names": ["a", "b"]}))
    with open(os.path.join(workdir, "export", "variables.msgpack"), "rb") as f:
        (directory / "variables.msgpack").write_bytes(f.read())
    with pytest.raises(export.ExportError, match=r"do not fit cnn3 \(params/.*has shape \(.*3\), the model \("):
        export.load_export(str(tmp_path))
    with pytest.raises(ValueError, match="do not fit cnn3 with 2 classes"):
        export.save_export(str(tmp_path), "cnn3", {}, variables, ["a", "b"], SHAPE)


def _photos(root) -> list:
    """Three readable images (one grayscale, one in a subfolder) and a corrupt one; returns the readable paths."""
    rng = np.random.default_rng(0)
    (root / "more").mkdir(parents=True)
    paths = [root / "a.png", root / "b.jpg", root / "more" / "c.png"]
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(paths[0])
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(paths[1])
    Image.fromarray(rng.integers(0, 256, (33, 31), dtype=np.uint8)).save(paths[2])
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return [str(p) for p in paths]


def _predict(workdir, *args):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "scripts/predict.py", f"--workdir={workdir}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_predict_prints_top_k_per_image_and_a_line_per_unreadable_file(exported, tmp_path):
    workdir, variables = exported
    readable = _photos(tmp_path)
    broken = str(tmp_path / "broken.png")
    model = get_model("cnn3", len(CLASSES))
    images = np.stack([data.read_image(p, SHAPE[:2]) for p in readable]) / np.float32(255)
    expected = np.asarray(jax.nn.softmax(model.apply(variables, images)))

    proc = _predict(workdir, "--json", "--top_k=2", "--batch_size=2", str(tmp_path))
    assert proc.returncode == 1, proc.stderr[-2000:]  # one file failed; the others are still classified
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["path"] for line in lines] == sorted([broken, *readable[:2]]) + [readable[2]]
    by_path = {line["path"]: line for line in lines}
    assert by_path[broken] == {"path": broken, "error": by_path[broken]["error"]}
    assert by_path[broken]["error"].startswith("not a readable JPEG, PNG")
    for path, probs in zip(readable, expected):
        top = by_path[path]["top_k"]
        best = np.argsort(-probs)[:2]
        assert [entry["class"] for entry in top] == [CLASSES[i] for i in best]
        np.testing.assert_allclose([entry["prob"] for entry in top], probs[best], rtol=1e-4)

    proc = _predict(workdir, "--top_k=9", readable[0], broken)
    assert proc.returncode == 1
    header, *rows, error = proc.stdout.splitlines()
    assert header == readable[0] and error.startswith(f"{broken}: error: not a readable")
    assert [row.split()[0] for row in rows] == [CLASSES[i] for i in np.argsort(-expected[0])]  # top_k capped at 3
    np.testing.assert_allclose(sum(float(row.split()[1]) for row in rows), 1.0, atol=1e-3)


LAZY_DATA = """
import sys
from cnn_jax import data
from cnn_jax.data import read_image, UnreadableImageError
assert "jax" not in sys.modules, "cnn_jax.data imported jax"
assert callable(read_image) and issubclass(UnreadableImageError, ValueError)
assert all(getattr(data, name) is not None for name in data.__all__) and data.augment.make_augment is data.make_augment
print(len(data.__all__))
"""


def test_cnn_jax_data_imports_its_names_on_first_use_without_jax():
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", LAZY_DATA], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout) >= 20  # every name the package had before it became lazy
