"""Portable formats (cnn_jax.export.portable) of a briefly trained simple_cnn on MNIST: parity on real test images,
no oneDNN call in any artifact, the SavedModel and the ONNX/TFLite runtimes without JAX, predict.py with every
runtime, bad input, and a durable workdir export. Longer parity checks (resnet20 on CIFAR-10, EfficientNet-Lite0
transfer, MobileNetV2, 1,000-image quantized agreement) are in tests/export/test_export_slow.py.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import ROOT, assert_float_parity, first_test_images, jax_logits, load, train_and_export
from PIL import Image

from cnn_jax import data, export
from cnn_jax.export import runtime as runtime_lib
from cnn_jax.ops.onednn import build

FFI_MARKS = (build.TARGET.encode(), b"onednn")  # this project's FFI target(s)












@pytest.fixture(scope="module")
def mnist():
    return load("mnist")


@pytest.fixture(scope="module")
def exported(mnist, tmp_path_factory):
    """A simple_cnn trained for 40 steps on 512 MNIST images, exported in every format."""
    workdir = train_and_export(tmp_path_factory.mktemp("mnist"), "simple_cnn", mnist, steps=40)
    calibration = next(iter(mnist.train_batches(1)))["image"]
    for fmt in export.FORMATS:
        export.export_format(workdir, fmt)
    for variant in ("dynamic_range", "int8"):
        export.export_format(workdir, "tflite", tflite_variant=variant, calibration_images=calibration)
    return workdir


def test_float_formats_match_the_jax_model_on_mnist_test_images(exported, mnist):
    images, labels = first_test_images(mnist, 256)
    want = assert_float_parity(exported, images)
    assert (want.argmax(1) == labels).mean() > 0.7  # trained, so the logits are not noise
    for variant in ("dynamic_range", "int8"):  # the quantized ones: same classes nearly always
        got = runtime_lib.load_runtime(exported, "tflite", variant).logits(images)
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.97, variant


def _artifact_bytes(path):
    if os.path.isfile(path):
        return pathlib.Path(path).read_bytes()
    return b"".join(p.read_bytes() for p in sorted(pathlib.Path(path).rglob("*")) if p.is_file())


def test_no_artifact_holds_the_onednn_call_or_any_ffi_target(exported):
    import onnx
    from ai_edge_litert.interpreter import Interpreter

    paths = [export.artifact_path(exported, fmt) for fmt in export.FORMATS]
    paths += [export.artifact_path(exported, "tflite", variant) for variant in ("dynamic_range", "int8")]
    for path in paths:
        content = _artifact_bytes(path)
        assert content and not [mark for mark in FFI_MARKS if mark in content], path
    exported_hlo = jax.export.deserialize(bytearray(_artifact_bytes(paths[0])))
    text = exported_hlo.mlir_module()
    assert "stablehlo.convolution" in text
    # jax.export's own check of the symbolic batch (a target with compatibility guarantees) is the only one.
    assert set(re.findall(r"custom_call @(\w+)", text)) == {"shape_assertion"}
    assert set(exported_hlo.platforms) == {"cpu", "cuda", "tpu"}
    model = onnx.load(export.artifact_path(exported, "onnx"))
    assert {node.domain for node in model.graph.node} == {""}  # the standard opset only
    for path in paths[2:3] + paths[4:]:
        ops = {op["op_name"] for op in Interpreter(model_path=path)._get_ops_details()}
        assert "CONV_2D" in ops and not [op for op in ops if op.startswith(("Flex", "CUSTOM"))], (path, ops)


def _run_python(code: str, *args, timeout=240):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


SAVED_MODEL_WITHOUT_JAX = """
import sys
from cnn_jax.export import runtime
runtime.keep_jax_out()
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2])
floats = loaded.signatures["serving_default"](images=tf.constant(images))["logits"].numpy()
encoded = tf.constant([open(p, "rb").read() for p in sys.argv[3:]])
from_bytes = loaded.signatures["serving_bytes"](encoded=encoded)["logits"].numpy()
spec = loaded.signatures["serving_default"].structured_input_signature[1]["images"]
assert "jax" not in sys.modules and "flax" not in sys.modules, sorted(m for m in sys.modules if "jax" in m)
np.savez(sys.argv[2], floats=floats, from_bytes=from_bytes, batch=str(spec.shape[0]))
"""


def test_saved_model_runs_in_a_process_without_jax_and_decodes_images_as_the_readers_do(exported, tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, shape in enumerate([(40, 50, 3), (28, 28), (17, 33)]):  # other sizes, RGB and gray: resized inside
        path = tmp_path / f"{i}.{'jpg' if i == 0 else 'png'}"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        paths.append(str(path))
    meta = export.read_meta(export.export_dir(exported), "")
    pixels = np.stack([data.read_image(p, meta.image_size, meta.image_shape[2]) for p in paths])
    images = (pixels / np.float32(255)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    proc = _run_python(SAVED_MODEL_WITHOUT_JAX, export.artifact_path(exported, "saved_model"),
                       str(tmp_path / "images.npy"), *paths)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = np.load(tmp_path / "images.npy.npz")
    want = jax_logits(exported, images)
    scale = np.abs(want).max()
    assert np.abs(result["floats"] - want).max() <= 1e-4 * scale
    assert np.abs(result["from_bytes"] - want).max() <= 1e-4 * scale  # the same pixels as data.read_image
    assert str(result["batch"]) == "None"  # a symbolic batch


def _predict(workdir, *args):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "scripts/predict.py", f"--workdir={workdir}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def digit_files(mnist, tmp_path_factory):
    """Twelve MNIST test images as PNG files, and a file that is not an image."""
    folder = tmp_path_factory.mktemp("digits")
    images, _ = first_test_images(mnist, 12)
    for i, image in enumerate(images):
        Image.fromarray(np.round(image[..., 0] * 255).astype(np.uint8)).save(folder / f"{i:02d}.png")
    (folder / "zz_broken.png").write_bytes(b"not a png")
    return str(folder)


NO_JAX_PREDICT = """
import runpy, sys
sys.argv = ["scripts/predict.py", *sys.argv[1:]]
try:
    runpy.run_path("scripts/predict.py", run_name="__main__")
except SystemExit as exit:
    print("JAX_IMPORTED" if "jax" in sys.modules else "NO_JAX", exit.code, file=sys.stderr)
"""


def _in_process_predict(workdir, folder, runtime="jax"):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import predict
    finally:
        sys.path.pop(0)
    paths = list(predict.image_paths([folder]))
    return [json.loads(json.dumps(r)) for r in predict.predict(runtime_lib.load_runtime(workdir, runtime), paths, 3, 5)]


def _assert_same_predictions(lines, reference, name):
    assert [line["path"] for line in lines] == [line["path"] for line in reference], name
    for line, want in zip(lines, reference):
        if "error" in want:
            assert line == want
            continue
        assert line["top_k"][0]["class"] == want["top_k"][0]["class"], (name, line["path"])
        np.testing.assert_allclose([e["prob"] for e in line["top_k"]], [e["prob"] for e in want["top_k"]],
                                   atol=1e-4, err_msg=name)


@pytest.mark.parametrize("runtime", ["tf", "onnx", "tflite"])
def test_predict_matches_jax_with_each_runtime_and_never_imports_jax(exported, digit_files, runtime):
    reference = _in_process_predict(exported, digit_files)
    assert len(reference) == 13 and "error" in reference[-1]  # the broken file fails, the others are classified
    proc = _run_python(NO_JAX_PREDICT, f"--workdir={exported}", f"--runtime={runtime}", "--json", "--top_k=3",
                       "--batch_size=5", digit_files)
    assert "NO_JAX 1" in proc.stderr, proc.stderr[-2000:]  # exit status 1: one file did not decode
    _assert_same_predictions([json.loads(line) for line in proc.stdout.splitlines()], reference, runtime)


def test_bad_input_gets_one_error_line(exported, tmp_path):
    corrupt = tmp_path / "run"
    (corrupt / "export").mkdir(parents=True)
    for name in ("meta.json", "variables.msgpack"):
        (corrupt / "export" / name).write_bytes((pathlib.Path(exported) / "export" / name).read_bytes())
    (corrupt / "export" / "model.onnx").write_bytes(b"\x08\x07garbage")
    (corrupt / "export" / "model_float32.tflite").write_bytes(b"TFL3 truncated")
    meta = json.loads((corrupt / "export" / "meta.json").read_text())  # their sums recorded: corrupt when written
    meta["sha256"].update({name: export.meta.digest(str(corrupt / "export" / name))
                           for name in ("model.onnx", "model_float32.tflite")})
    (corrupt / "export" / "meta.json").write_text(json.dumps(meta))
    image = os.path.join(ROOT, "tests", "export", "test_export_portable.py")  # any path: the errors come before reading
    cases = [
        (["scripts/export.py", f"--workdir={exported}", "--format=tflite,coreml"],
         "error: unknown format 'coreml': choose one of stablehlo, saved_model, tflite, onnx"),
        (["scripts/export.py", f"--workdir={tmp_path / 'empty'}", "--format=onnx"],
         f"error: the export {tmp_path / 'empty' / 'export'} does not exist"),
        (["scripts/predict.py", f"--workdir={corrupt}", "--runtime=onnx", image],
         f"error: corrupt onnx artifact {corrupt / 'export' / 'model.onnx'}"),
        (["scripts/predict.py", f"--workdir={corrupt}", "--runtime=tflite", image],
         f"error: corrupt tflite artifact {corrupt / 'export' / 'model_float32.tflite'}"),
        (["scripts/predict.py", f"--workdir={corrupt}", "--runtime=tf", image],
         f"error: no saved_model artifact at {corrupt / 'export' / 'saved_model'}: write it with python "
         f"scripts/export.py --workdir={corrupt} --format=saved_model"),
        (["scripts/predict.py", f"--workdir={exported}", "--runtime=coreml", image],
         "error: unknown runtime 'coreml': choose one of jax, stablehlo, tf, tflite, onnx"),
    ]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for argv, message in cases:
        proc = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=240)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 1 and len(errors) == 1 and errors[0].startswith(message), (argv, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr


def test_an_op_a_format_cannot_express_is_named_with_another_format(exported, monkeypatch):
    from cnn_jax.export import tf_lowering

    monkeypatch.delitem(tf_lowering._ELEMENTWISE, "max")  # as if TFLite had no maximum (simple_cnn's ReLU)
    before = pathlib.Path(export.artifact_path(exported, "tflite")).read_bytes()
    with pytest.raises(export.UnsupportedOpError, match="tflite cannot express the JAX primitive 'max'; export "
                                                        "to onnx, stablehlo or saved_model"):
        export.export_format(exported, "tflite")
    assert pathlib.Path(export.artifact_path(exported, "tflite")).read_bytes() == before  # the old one is kept


def test_a_failed_re_export_leaves_the_previous_export_usable(exported, tmp_path, monkeypatch):
    from cnn_jax.export import workdir as workdir_lib

    model, variables, meta = export.load_export(exported)
    workdir = str(tmp_path)
    export.save_export(workdir, meta.model_name, {}, variables, meta.class_names, meta.image_shape)
    onnx_path = export.export_format(workdir, "onnx")
    changed = jax.tree.map(lambda v: v + 1, variables)
    real_write = workdir_lib.write_synced

    def write_half_then_fail(path, content):
        real_write(path, content[:len(content) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(workdir_lib, "write_synced", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        export.save_export(workdir, meta.model_name, {}, changed, meta.class_names, meta.image_shape)
    monkeypatch.undo()
    _, kept, _ = export.load_export(workdir)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(variables)))
    assert os.path.isfile(onnx_path)  # the artifacts of that export are still beside it
    assert sorted(os.listdir(workdir)) == ["export"]  # no staged directory left behind
    export.save_export(workdir, meta.model_name, {}, changed, meta.class_names, meta.image_shape)
    _, new, _ = export.load_export(workdir)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(changed)))
    assert not os.path.exists(onnx_path)  # a re-export drops artifacts made from the old weights
