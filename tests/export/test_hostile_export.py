"""Exported artifacts are programs (issue 30): each runs only with the SHA-256 its meta.json recorded, the
metadata must fit the artifact, crafted artifacts with file, custom or external ops are refused, and
``scripts/predict.py`` turns each of these into one ``error:`` line and prints names with control characters
escaped.

One small export (cnn3 with random variables, 3 classes, 32x32 RGB) in every format is shared by the module;
each crafted artifact is written beside a copy of it with its sum recorded as a hostile author would record it.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT
from PIL import Image

from cnn_jax import export
from cnn_jax.export import meta as meta_lib
from cnn_jax.export import runtime as runtime_lib
from cnn_jax.models import get_model

CLASSES = ("cat", "dog", "fish")
SHAPE = (32, 32, 3)
RUNTIMES = ("stablehlo", "tf", "tflite", "onnx")


def _variables(seed: int):
    shapes = jax.eval_shape(get_model("cnn3", len(CLASSES)).init, jax.random.key(0), jnp.zeros((1, *SHAPE)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(np.float32) if s.ndim == 1
                        else rng.normal(0, 0.2, s.shape).astype(np.float32), shapes)


def _export(workdir, seed: int, formats=("stablehlo", "saved_model", "tflite", "onnx"), classes=CLASSES) -> str:
    export.save_export(str(workdir), "cnn3", {}, _variables(seed), classes, SHAPE)
    for fmt in formats:
        export.export_format(str(workdir), fmt)
    return str(workdir)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("run"), seed=0)


@pytest.fixture
def copy(exported, tmp_path):
    """A copy of the export's workdir, to change."""
    return shutil.copytree(exported, tmp_path / "run")


def _meta(workdir) -> dict:
    return json.loads((pathlib.Path(workdir) / "export" / "meta.json").read_text())


def _write_meta(workdir, meta: dict) -> None:
    (pathlib.Path(workdir) / "export" / "meta.json").write_text(json.dumps(meta))


def _plant(workdir, name: str) -> None:
    """Records the sum of ``export/<name>`` in meta.json, as the author of a crafted workdir would."""
    meta = _meta(workdir)
    meta["sha256"][name] = meta_lib.digest(str(pathlib.Path(workdir) / "export" / name))
    _write_meta(workdir, meta)


def _images(count=2):
    return np.random.default_rng(1).uniform(size=(count, *SHAPE)).astype(np.float32)


# ---------------------------------------------------------------- sums recorded when written, checked when run

def test_every_file_of_an_export_has_its_sum_recorded_when_written(exported):
    sums = _meta(exported)["sha256"]
    names = ["variables.msgpack", "model.stablehlo", "saved_model", "model_float32.tflite", "model.onnx"]
    assert sorted(sums) == sorted(names)
    for name in names:
        assert sums[name] == meta_lib.digest(os.path.join(exported, "export", name)), name
    want = runtime_lib.load_runtime(exported, "jax").logits(_images())
    for runtime in RUNTIMES:
        got = runtime_lib.load_runtime(exported, runtime).logits(_images())
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=runtime)


@pytest.mark.parametrize("runtime,name", [("jax", "variables.msgpack"), ("onnx", "model.onnx"),
                                          ("tflite", "model_float32.tflite"), ("stablehlo", "model.stablehlo"),
                                          ("tf", "saved_model")])
def test_a_changed_artifact_is_refused(copy, runtime, name):
    path = pathlib.Path(copy) / "export" / name
    if path.is_dir():
        (path / "variables" / "extra").write_bytes(b"planted")
    else:
        content = bytearray(path.read_bytes())
        content[len(content) // 2] ^= 1
        path.write_bytes(bytes(content))
    with pytest.raises(export.ExportError, match=rf"{name} is not the file its meta.json recorded \(sha256 .*"
                                                 r"it was changed, or the metadata is another export's"):
        runtime_lib.load_runtime(str(copy), runtime)


def test_an_artifact_without_a_recorded_sum_is_refused(copy):
    meta = _meta(copy)
    del meta["sha256"]["model.onnx"]
    _write_meta(copy, meta)
    with pytest.raises(export.ExportError, match=r"model.onnx has no SHA-256 in its meta.json, so it was not written "
                                                 r"for this export; write it again with python scripts/export.py "
                                                 r".*--format=onnx"):
        runtime_lib.load_runtime(str(copy), "onnx")


def test_a_meta_json_from_another_export_with_the_same_classes_is_refused(copy, tmp_path):
    """The issue's swap: same class count and shape, so without the sums it would print wrong labels."""
    other = _export(tmp_path / "other", seed=1, formats=("onnx",), classes=("dog", "fish", "cat"))
    shutil.copy(pathlib.Path(other) / "export" / "meta.json", pathlib.Path(copy) / "export" / "meta.json")
    for runtime in ("onnx", "jax"):
        with pytest.raises(export.ExportError, match="is not the file its meta.json recorded"):
            runtime_lib.load_runtime(str(copy), runtime)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("change,says", [({"class_names": ["a", "b", "c", "d"]}, r"\(32, 32, 3\) and 4 classes"),
                                         ({"image_shape": [28, 28, 3]}, r"\(28, 28, 3\) and 3 classes")],
                         ids=["classes", "image_shape"])
def test_metadata_that_does_not_fit_its_artifact_is_refused(copy, runtime, change, says):
    _write_meta(copy, {**_meta(copy), **change})
    fmt = {"tf": "saved_model"}.get(runtime, runtime)
    with pytest.raises(export.ExportError, match=rf"the {fmt} artifact .* takes images of shape \(32, 32, 3\) and "
                                                 rf"gives 3 classes, but its meta.json says {says}: the metadata is "
                                                 "not this artifact's"):
        runtime_lib.load_runtime(str(copy), runtime)


# ---------------------------------------------------------------- crafted artifacts: their ops are inspected

def _saved_model(path, body) -> None:
    """A SavedModel with the export's signature whose serving function runs ``body(images)`` first."""
    import tensorflow as tf

    module = tf.Module()
    module.serving = tf.function(lambda images: {"logits": body(images) + tf.zeros([tf.shape(images)[0], 3])},
                                 input_signature=[tf.TensorSpec([None, *SHAPE], tf.float32, name="images")])
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serving.get_concrete_function()})


@pytest.mark.parametrize("op", ["WriteFile", "ReadFile", "MatchingFiles", "SaveV2"])
def test_a_saved_model_with_file_ops_is_refused_before_it_runs(copy, tmp_path, op):
    """The issue's SavedModel wrote and read files when predict ran it (exit 0); now it never loads."""
    import tensorflow as tf

    written = tmp_path / "written"

    def body(images):  # tf.function runs stateful ops (file writes) whether or not their results are used
        if op == "WriteFile":
            tf.io.write_file(str(written), "x")
        elif op == "SaveV2":
            tf.raw_ops.SaveV2(prefix=str(written), tensor_names=["x"], shape_and_slices=[""], tensors=[images])
        elif op == "ReadFile":
            return tf.cast(tf.strings.length(tf.io.read_file("/etc/hostname")), tf.float32)
        elif op == "MatchingFiles":
            return tf.cast(tf.size(tf.io.matching_files("/etc/*")), tf.float32)
        return tf.constant(0.0)

    target = pathlib.Path(copy) / "export" / "saved_model"
    shutil.rmtree(target)
    _saved_model(target, body)
    _plant(copy, "saved_model")
    with pytest.raises(export.ExportError, match=rf"refusing the saved_model artifact .*saved_model: it holds the op "
                                                 rf"'{op}' \(in function .*\), which no model this code exports holds"
                                                 r".*A workdir from someone else is code to trust; share models "
                                                 r"as ONNX"):
        runtime_lib.load_runtime(str(copy), "tf")
    assert not list(tmp_path.glob("written*"))


def test_an_onnx_model_with_custom_ops_or_external_data_is_refused(copy):
    import onnx
    from onnx import TensorProto, helper

    path = pathlib.Path(copy) / "export" / "model.onnx"
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", *SHAPE])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 3])
    custom = helper.make_node("Evil", ["images"], ["logits"], domain="com.example")
    model = helper.make_model(helper.make_graph([custom], "g", [images], [logits]),
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    path.write_bytes(model.SerializeToString())
    _plant(copy, "model.onnx")
    with pytest.raises(export.ExportError, match=r"model.onnx: its node '' is the op 'Evil' of the domain "
                                                 r"'com.example'"):
        runtime_lib.load_runtime(str(copy), "onnx")
    weights = helper.make_tensor("w", TensorProto.FLOAT, [3], [0.0, 0.0, 0.0])
    weights.data_location = TensorProto.EXTERNAL
    weights.ClearField("float_data")
    weights.external_data.add(key="location", value="/etc/hostname")
    add = helper.make_node("Add", ["images", "w"], ["logits"])
    model = helper.make_model(helper.make_graph([add], "g", [images], [logits], [weights]),
                              opset_imports=[helper.make_opsetid("", 18)])
    path.write_bytes(model.SerializeToString())
    _plant(copy, "model.onnx")
    with pytest.raises(export.ExportError, match=r"its tensor 'w' reads external data from a file"):
        runtime_lib.load_runtime(str(copy), "onnx")
    del onnx


def test_a_tflite_model_with_a_custom_operator_is_refused(copy):
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    path = pathlib.Path(copy) / "export" / "model_float32.tflite"
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(path.read_bytes(), 0))
    model.operatorCodes[0].builtinCode = model.operatorCodes[0].deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    model.operatorCodes[0].customCode = "FlexReadFile"
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    _plant(copy, "model_float32.tflite")
    with pytest.raises(export.ExportError, match=r"model_float32.tflite: it holds the custom operator "
                                                 r"'FlexReadFile'"):
        runtime_lib.load_runtime(str(copy), "tflite")


def test_a_stablehlo_module_that_calls_host_code_is_refused(copy):
    def model(images):  # a call into whatever the loading process registered as "system"
        return jax.ffi.ffi_call("system", jax.ShapeDtypeStruct((images.shape[0], 3), jnp.float32))(images)

    (batch,) = jax.export.symbolic_shape("b")
    system_call = jax.export.DisabledSafetyCheck.custom_call("system")
    exported = jax.export.export(jax.jit(model), disabled_checks=[system_call])(
        jax.ShapeDtypeStruct((batch, *SHAPE), jnp.float32))
    (pathlib.Path(copy) / "export" / "model.stablehlo").write_bytes(exported.serialize())
    _plant(copy, "model.stablehlo")
    with pytest.raises(export.ExportError, match=r"refusing the stablehlo artifact .*model.stablehlo: it calls the "
                                                 r"custom target 'system'"):
        runtime_lib.load_runtime(str(copy), "stablehlo")


# ---------------------------------------------------------------- predict: one error line, names made printable

def _predict(*args):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "scripts/predict.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)


def test_predict_with_metadata_that_does_not_fit_is_one_error_line(copy, tmp_path):
    _write_meta(copy, {**_meta(copy), "class_names": ["a", "b"]})
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    proc = _predict(f"--workdir={copy}", "--runtime=onnx", str(image))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "takes images of shape (32, 32, 3) and gives 3 classes, but its meta.json says" in errors[0]


def test_predict_prints_class_and_file_names_with_control_characters_escaped(tmp_path):
    workdir = _export(tmp_path / "run", seed=0, formats=("onnx",),
                      classes=("\x1b[2J\x1b[31mcat", "dog\nfish: 0.99", "bird"))
    image = tmp_path / "photo\x1b[0m.png"
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(image)
    proc = _predict(f"--workdir={workdir}", "--runtime=onnx", "--top_k=3", str(image))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\x1b" not in proc.stdout and len(proc.stdout.splitlines()) == 4, proc.stdout
    assert "photo\\x1b[0m.png" in proc.stdout and "\\x1b[2J\\x1b[31mcat" in proc.stdout
    assert "dog\\nfish: 0.99" in proc.stdout


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels (and whose data is cut off): what a
    decompression bomb shows before it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(1024)))


def test_predict_refuses_a_decompression_bomb_from_its_header(exported, tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_header(14000, 14000))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "fine.png")
    proc = _predict(f"--workdir={exported}", "--runtime=onnx", str(tmp_path))
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith(f"{tmp_path / 'bomb.png'}: error: its header claims 196,000,000 pixels"), lines
    assert lines[1] == str(tmp_path / "fine.png") and len(lines) == 5  # the other file is still classified


def test_predict_help_says_a_workdir_is_code_and_onnx_is_the_format_to_share():
    proc = _predict("--help")
    text = " ".join(proc.stdout.split())
    assert "run a workdir from someone else only as far as you would run their code" in text, proc.stdout[:3000]
    assert "To share a model, share its ONNX file" in text
