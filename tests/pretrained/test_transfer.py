"""Transfer learning: the image-folder reader, freezing and learning-rate groups, class weights, and the
`experiments.transfer` script end to end on a generated image folder.

The "pretrained" weights are random ones written into a temporary weight cache in the format
``cnn_jax.pretrained`` caches conversions in, so these tests need no weights file and can compare every
trained variable with the one it started from.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util
from helpers import ROOT
from PIL import Image

from cnn_jax import data, export, pretrained, train
from cnn_jax.layers import ConvBN
from experiments import transfer

COLORS = ("blue", "green", "red")  # class names, sorted; the image's dominant channel is its class


def write_image_folder(root, per_class: int = 6) -> int:
    """Class folders of tinted noise images in four formats and sizes (one nested), plus a text file, a truncated
    JPEG and a hidden file; returns the number of readable images."""
    rng = np.random.default_rng(0)
    for channel, name in zip((2, 1, 0), COLORS):
        for i in range(per_class):
            folder = root / name / ("nested" if i == 0 else "")
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 60, (30 + 4 * i, 44, 3), dtype=np.uint8)
            pixels[..., channel] += 180
            Image.fromarray(pixels).save(folder / f"{i}.{('png', 'jpg', 'gif', 'bmp')[i % 4]}")
    (root / "red" / "notes.txt").write_text("not an image")
    (root / "green" / "cut.jpg").write_bytes((root / "green" / "1.jpg").read_bytes()[:60])
    (root / "blue" / ".DS_Store").write_bytes(b"\0")
    return per_class * len(COLORS)


def write_fake_pretrained(cache_dir, name: str) -> dict:
    """Random variables for ``name`` where ``load_pretrained`` finds a cached conversion; returns them."""
    spec = pretrained.pretrained_spec(name)
    shapes = jax.eval_shape(spec.build().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(1)
    variables = jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(np.float32) if s.ndim == 1
                             else rng.normal(0, 0.1, s.shape).astype(np.float32), shapes)
    directory = pretrained.cache_path(name, cache_dir)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "variables", variables, force=True)
    (directory / "source.json").write_text(json.dumps({"source": "random, for tests", "sha256": "0"}))
    return variables


def _flat(variables) -> dict:
    return {"/".join(key): np.asarray(value) for key, value in traverse_util.flatten_dict(dict(variables)).items()}


def _run(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------- image folders

def test_image_folder_decodes_every_format_and_skips_what_is_not_an_image(tmp_path, caplog):
    readable = write_image_folder(tmp_path)
    with caplog.at_level(logging.WARNING, "cnn_jax.data.image_folder"):
        folder = data.read_image_folder(str(tmp_path), (16, 16))
    assert folder.class_names == COLORS
    assert folder.images.shape == (readable, 16, 16, 3) and folder.images.dtype == np.uint8
    assert sorted(os.path.basename(p) for p in folder.skipped) == ["cut.jpg", "notes.txt"]
    assert "skipped 2 of 20 files" in caplog.text
    dominant = folder.images.astype(int).mean(axis=(1, 2)).argmax(-1)  # channel 2 (blue), 1 (green), 0 (red)
    np.testing.assert_array_equal(dominant, 2 - folder.labels)
    np.testing.assert_array_equal(np.bincount(folder.labels), [readable // 3] * 3)

    with pytest.raises(data.UnreadableImageError, match="notes.txt: not a readable JPEG"):
        data.read_image(str(tmp_path / "red" / "notes.txt"), (16, 16))
    np.testing.assert_array_equal(data.read_image(str(tmp_path / "red" / "1.jpg"), (16, 16)),
                                  folder.images[folder.labels == 2][0])


def test_a_folder_path_loads_with_seeded_splits_and_counts_skipped_files(tmp_path):
    readable = write_image_folder(tmp_path)
    config = data.DataConfig(str(tmp_path), image_size=(8, 12), batch_size=2, validation_fraction=0.25, seed=3)
    dataset = data.load(config)
    info = dataset.info
    assert (info.num_classes, info.class_names, info.image_shape, info.num_skipped) == (3, COLORS, (8, 12, 3), 2)
    assert info.num_test == round(data.TEST_FRACTION * readable)
    assert info.num_train + info.num_validation + info.num_test == readable
    assert dataset.train_class_counts().sum() == info.num_train
    again = data.load(config)
    np.testing.assert_array_equal(next(dataset.eval_batches("validation"))["image"],
                                  next(again.eval_batches("validation"))["image"])

    with pytest.raises(ValueError, match="set image_size"):
        data.load(data.DataConfig(str(tmp_path), batch_size=2))
    with pytest.raises(ValueError, match="does not exist"):
        data.load(data.DataConfig(str(tmp_path / "nowhere"), image_size=(8, 8)))
    with pytest.raises(ValueError, match="at least 2"):
        data.load(data.DataConfig(str(tmp_path / "red"), image_size=(8, 8)))


# ---------------------------------------------------------------- freezing, learning rates, class weights

class ThreeStages(nn.Module):
    """Three ConvBN stages, sown as the zoo models sow them, and a Dense head."""
    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        for stage in (1, 2, 3):
            x = ConvBN(4, 3, 1 if stage == 1 else 2, name=f"conv{stage}")(x, train)
            self.sow("intermediates", f"stage{stage}", x)
        return nn.Dense(self.num_classes, name="classifier")(x.mean(axis=(1, 2)))


IMAGE_SHAPE = (8, 8, 3)
SGD = train.TrainConfig(epochs=1, learning_rate=0.5, optimizer="sgd", momentum=0.0, schedule="constant",
                        progress_bar=False, tensorboard=False)


def _pretrained_and_batch():
    model = ThreeStages()
    variables = model.init(jax.random.key(7), jnp.zeros((1, *IMAGE_SHAPE)))
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(size=(6, *IMAGE_SHAPE)).astype(np.float32), "label": np.array([0, 1, 2, 0, 0, 1])}
    return model, variables, batch


def test_stages_follow_the_sown_outputs_and_the_classifier_is_the_head():
    assert train.network_stages(ThreeStages(), IMAGE_SHAPE) == ([("conv1",), ("conv2",), ("conv3",)], ("classifier",))
    stages, head = train.network_stages(pretrained.pretrained_spec("efficientnet_lite0").build(), (224, 224, 3))
    assert head == ("classifier",) and stages[0] == ("stem", "block0") and stages[-1] == ("head_conv",)
    assert len(stages) == 8 and sum(map(len, stages)) == 1 + 16 + 1
    stages, _ = train.network_stages(pretrained.pretrained_spec("resnet18").build(), (224, 224, 3))
    assert stages[0] == ("stem", "stage1_block0", "stage1_block1") and len(stages) == 4


def test_fine_tuning_trains_the_last_stages_at_their_rate_and_leaves_the_rest_untouched():
    model, variables, batch = _pretrained_and_batch()
    tuning = train.fine_tuning(model, IMAGE_SHAPE, variables, unfreeze=1, backbone_learning_rate=0.05)
    assert (tuning.frozen, tuning.backbone) == (("conv1", "conv2"), ("conv3",))
    state = tuning.train_state(model, SGD, 1, IMAGE_SHAPE)
    start = _flat(state.variables)
    assert not np.array_equal(start["params/classifier/kernel"], variables["params"]["classifier"]["kernel"])

    def loss(params):  # the train step's loss, for the gradient that SGD applies
        logits, _ = state.apply_fn({**state.variables, "params": params}, batch["image"], train=True,
                                   mutable=["batch_stats"])
        return train.cross_entropy(logits, batch["label"]).mean()

    grads = _flat({"params": jax.jit(jax.grad(loss))(state.params)})
    state, _ = jax.jit(train.make_train_step())(state, batch)
    end = _flat(state.variables)
    for name, before in start.items():
        if name.split("/")[1] in ("conv1", "conv2"):  # frozen: params and BatchNorm statistics as pretrained
            np.testing.assert_array_equal(end[name], before, err_msg=name)
            np.testing.assert_array_equal(grads.get(name, 0.0), 0.0, err_msg=name)
        elif name.startswith("params"):  # plain SGD: the update is -rate * gradient, by group
            rate = 0.05 if "conv3" in name else SGD.learning_rate
            np.testing.assert_allclose(end[name] - before, -rate * grads[name], atol=1e-6, err_msg=name)
    assert not np.array_equal(end["batch_stats/conv3/bn/mean"], start["batch_stats/conv3/bn/mean"])


def test_feature_extraction_runs_the_backbone_in_inference_mode():
    model, variables, batch = _pretrained_and_batch()
    state = train.fine_tuning(model, IMAGE_SHAPE, variables, unfreeze=0).train_state(model, SGD, 1, IMAGE_SHAPE)
    training, _ = state.apply_fn(state.variables, batch["image"], train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(training, state.apply_fn(state.variables, batch["image"]), rtol=1e-6)
    normal, _ = model.apply(state.variables, batch["image"], train=True, mutable=["batch_stats"])
    assert not np.allclose(normal, training)  # without freezing, train mode normalizes with batch statistics


def test_fine_tuning_rejects_bad_stage_counts_and_foreign_variables():
    model, variables, _ = _pretrained_and_batch()
    with pytest.raises(ValueError, match="has 3 stages; use 0 .* to 3"):
        train.fine_tuning(model, IMAGE_SHAPE, variables, unfreeze=4)
    foreign = {"params": {**variables["params"], "conv9": variables["params"]["conv1"]}}
    with pytest.raises(ValueError, match="params/conv9/.*, which the model does not have"):
        train.fine_tuning(model, IMAGE_SHAPE, foreign, unfreeze=None).train_state(model, SGD, 1, IMAGE_SHAPE)


def test_class_weights_are_inverse_frequencies_and_weight_the_loss():
    np.testing.assert_allclose(train.balanced_class_weights([1, 3, 0]), [2.0, 2 / 3, 0.0])
    model, variables, batch = _pretrained_and_batch()
    state = train.create_train_state(model, optax.sgd(0.1), IMAGE_SHAPE, 0)
    weights = np.array([0.5, 2.0, 4.0], np.float32)
    _, metrics = jax.jit(train.make_train_step(class_weights=weights))(state, batch)
    logits, _ = jax.jit(model.apply, static_argnames=("train", "mutable"))(
        state.variables, batch["image"], train=True, mutable=("batch_stats",))
    losses = np.asarray(train.cross_entropy(logits, batch["label"]))
    w = weights[batch["label"]]
    np.testing.assert_allclose(metrics["loss"], (w * losses).sum() / w.sum(), rtol=1e-5)


# ---------------------------------------------------------------- the script

@pytest.mark.slow  # long end-to-end run; `python -m pytest -m slow`
def test_two_phase_transfer_end_to_end_then_predict(tmp_path):
    """Feature extraction, then fine-tuning of the last stage, from cached "pretrained" weights; what each phase
    trains changes and nothing else does; the export classifies the folder with scripts/predict.py."""
    folder, workdir = tmp_path / "photos", tmp_path / "run"
    write_image_folder(folder)
    start = _flat(write_fake_pretrained(tmp_path / "cache", "efficientnet_lite0"))
    proc = _run("-m", "experiments.transfer", f"--workdir={workdir}", f"--dataset={folder}",
                f"--cache_dir={tmp_path / 'cache'}", "--mode=two_phase", "--feature_extract_epochs=1", "--epochs=1",
                "--unfreeze=1", "--image_size=32", "--batch_size=4", "--eval_batch_size=4", "--class_weights",
                "--log_every_steps=2", f"--compilation_cache_dir={tmp_path / 'xla'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped 2 of 20 files" in proc.stderr and "test accuracy" in proc.stdout

    with open(workdir / "results.json") as f:
        results = json.load(f)
    assert set(results) == {"test_accuracy", "test_loss", "per_class_accuracy", "wall_time_s",
                            "train_images_per_sec", "steps", "flags"}
    assert list(results["per_class_accuracy"]) == list(COLORS) and results["steps"] == 3
    assert {k: results["flags"][k] for k in ("backbone", "mode", "unfreeze", "image_size", "class_weights")} == {
        "backbone": "efficientnet_lite0", "mode": "two_phase", "unfreeze": 1, "image_size": [32, 32],
        "class_weights": True}
    for path in ("figures/training_curves.png", "figures/confusion_matrix.png", "metrics.jsonl",
                 "feature_extract/results.json", "feature_extract/export/meta.json"):
        assert (workdir / path).exists(), path

    for phase, trained in (("feature_extract", ()), ("", ("head_conv",))):
        _, variables, meta = export.load_export(str(workdir / phase))
        assert (meta.model_name, meta.class_names, meta.image_shape) == ("efficientnet_lite0", COLORS, (32, 32, 3))
        end = _flat(variables)
        assert end["params/classifier/kernel"].shape == (1280, 3)
        for name, value in start.items():
            if "classifier" not in name:
                assert np.array_equal(end[name], value) != (name.split("/")[1] in trained), (phase, name)

    predictions = _run("scripts/predict.py", f"--workdir={workdir}", "--json", "--top_k=2", str(folder / "blue"))
    lines = [json.loads(line) for line in predictions.stdout.splitlines()]
    assert predictions.returncode == 0 and len(lines) == 6, predictions.stderr[-2000:]
    assert all(len(line["top_k"]) == 2 and line["top_k"][0]["class"] in COLORS for line in lines)


@pytest.mark.slow  # long end-to-end run; `python -m pytest -m slow`
def test_from_scratch_baseline_trains_every_stage_without_pretrained_weights(tmp_path):
    """The baseline needs no weights (an empty cache stays empty), trains the whole network, and says so."""
    folder, workdir, cache = tmp_path / "photos", tmp_path / "run", tmp_path / "cache"
    write_image_folder(folder)
    cache.mkdir()
    proc = _run("-m", "experiments.transfer", f"--workdir={workdir}", f"--dataset={folder}", f"--cache_dir={cache}",
                "--from_scratch", "--backbone=resnet18", "--epochs=1", "--image_size=32", "--batch_size=4",
                "--eval_batch_size=4",
                "--learning_rate=0.01", f"--compilation_cache_dir={tmp_path / 'xla'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(cache.iterdir()) == []
    with open(workdir / "results.json") as f:
        results = json.load(f)
    assert results["flags"]["from_scratch"] is True and results["steps"] == 3
    _, variables, meta = export.load_export(str(workdir))
    assert meta.model_name == "resnet18" and meta.model_kwargs["bn_momentum"] == transfer.FROM_SCRATCH_BN_MOMENTUM
    shapes = jax.eval_shape(pretrained.pretrained_spec("resnet18").build(num_classes=3).init,
                            jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    trained = _flat(variables["params"])
    assert {name: value.shape for name, value in trained.items()} == {
        "/".join(key): value.shape for key, value in traverse_util.flatten_dict(dict(shapes["params"])).items()}
    # BatchNorm scales start at 1 and biases at 0: every part of the network that has them has moved.
    initial = {"scale": 1.0, "bias": 0.0}
    constants = {name: initial[name.rsplit("/", 1)[1]] for name in trained if name.rsplit("/", 1)[1] in initial}
    parts = {name.split("/")[0] for name in constants}
    moved = {name.split("/")[0] for name, value in constants.items() if not np.all(trained[name] == value)}
    assert len(parts) > 5 and moved == parts


@pytest.mark.parametrize("flag,message", [
    ("--backbone=resnet9000", "no pretrained weights named 'resnet9000'; choose one of: efficientnet_lite0"),
    ("--unfreeze=2", "--unfreeze=2 with --mode=feature_extract, which trains only the head"),
])
def test_bad_transfer_flags_fail_fast_with_one_message(tmp_path, flag, message):
    proc = _run("-m", "experiments.transfer", f"--workdir={tmp_path}", "--dataset=/nonexistent", flag)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr
