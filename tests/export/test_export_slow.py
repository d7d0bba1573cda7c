"""Longer parity checks of the portable formats (marked slow): resnet20 on CIFAR-10, EfficientNet-Lite0 transferred
to tf_flowers from its ImageNet weights, MobileNetV2 from scratch, and the quantized TFLite variants of a simple_cnn
trained on MNIST against the float model on 1,000 test images (RESULTS.md records the measured agreement).
"""
from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers import assert_float_parity, first_test_images, load, train_and_export

from cnn_jax import export
from cnn_jax.export import runtime as runtime_lib

pytestmark = pytest.mark.slow


def _export_floats(workdir):
    for fmt in export.FORMATS:
        export.export_format(workdir, fmt)


@pytest.mark.parametrize("model_name", ["resnet20", "mobilenet_v2"])
def test_cifar10_models_in_every_float_format(tmp_path, model_name):
    ds = load("cifar10")
    workdir = train_and_export(tmp_path, model_name, ds, steps=30)
    _export_floats(workdir)
    images, _ = first_test_images(ds, 256)
    assert_float_parity(workdir, images)


def test_efficientnet_lite0_transferred_to_tf_flowers_in_every_float_format(tmp_path):
    from cnn_jax import pretrained

    try:
        _, imagenet = pretrained.load_pretrained("efficientnet_lite0", cache_dir=str(tmp_path / "cache"))
    except pretrained.WeightsNotFoundError as error:
        pytest.skip(str(error))
    ds = load("tf_flowers", image_size=(128, 128), num_train_examples=256, batch_size=32)
    kwargs = dict(pretrained.pretrained_spec("efficientnet_lite0").model_kwargs)
    workdir = train_and_export(tmp_path / "run", "efficientnet_lite0", ds, steps=10, initial=imagenet, **kwargs)
    _export_floats(workdir)
    images, _ = first_test_images(ds, 64)
    assert_float_parity(workdir, images)


def test_quantized_tflite_agrees_with_the_float_model_on_1000_mnist_test_images(tmp_path):
    ds = load("mnist", num_train_examples=8192, batch_size=128)
    workdir = train_and_export(tmp_path, "simple_cnn", ds, steps=300)
    calibration = np.concatenate([batch["image"] for _, batch in zip(range(3), ds.train_batches(1))])[:300]
    images, labels = first_test_images(ds, 1000)
    model, variables, _ = export.load_export(workdir)
    float_top1 = np.asarray(jax.jit(model.apply)(variables, images)).argmax(1)
    float_accuracy = (float_top1 == labels).mean()
    for variant in ("dynamic_range", "int8"):
        export.export_format(workdir, "tflite", tflite_variant=variant, calibration_images=calibration)
        top1 = runtime_lib.load_runtime(workdir, "tflite", variant).logits(images).argmax(1)
        agreement, accuracy = (top1 == float_top1).mean(), (top1 == labels).mean()
        print(f"{variant}: top-1 agreement {agreement:.4f}, accuracy {accuracy:.4f} (float {float_accuracy:.4f})")
        assert agreement >= 0.99 and float_accuracy - accuracy <= 0.005, variant
