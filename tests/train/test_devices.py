"""One device against many: resnet20 trained a few steps on one CPU device (its convolutions on oneDNN) ends where
the same steps on meshes of 2 and 8 simulated devices (XLA's convolutions, the batch split over the devices) end.

Slow: it compiles resnet20's train step three times (one device here, 2 and 8 in a subprocess): 60 to 100 s on the
2-core VM, by its load.
"""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from cnn_jax.models import get_model
from cnn_jax.ops import onednn
from cnn_jax.ops.onednn import build
from cnn_jax.train import create_train_state, make_train_step
from cnn_jax.train import sharding as sharding_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS, BATCH, SIZE = 3, 16, 16  # 16 images: 2 per device on 8 devices
LEARNING_RATE = 0.05


def batches():
    rng = np.random.default_rng(7)
    images = rng.random((STEPS, BATCH, SIZE, SIZE, 3), np.float32)
    labels = rng.integers(0, 10, (STEPS, BATCH)).astype(np.int32)
    return [{"image": images[i], "label": labels[i]} for i in range(STEPS)]


def train(devices) -> dict:
    """resnet20's variables before (``init/...``) and after (``final/...``) ``STEPS`` SGD steps on a mesh of
    ``devices``, flattened by path, and each step's loss; ``"onednn"`` says whether the compiled step calls
    oneDNN."""
    mesh = Mesh(np.asarray(devices), (sharding_lib.DATA_AXIS,))
    on_all, on_batch = sharding_lib.replicated(mesh), sharding_lib.batch_sharding(mesh)
    state = create_train_state(get_model("resnet20", 10), optax.sgd(LEARNING_RATE, momentum=0.9), (SIZE, SIZE, 3),
                               seed=0, sharding=on_all)
    step = jax.jit(make_train_step(), in_shardings=(on_all, on_batch), out_shardings=(on_all, on_all))
    result = {"onednn": np.asarray(build.TARGET in step.lower(state, batches()[0]).as_text())}
    result.update(_flat("init/", state.variables))
    for i, batch in enumerate(batches()):
        state, metrics = step(state, jax.device_put(batch, on_batch))
        result[f"loss{i}"] = np.asarray(metrics["loss"])
    return {**result, **_flat("final/", state.variables)}


def _flat(prefix: str, tree) -> dict:
    return {prefix + jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    out = tmp_path_factory.mktemp("devices") / "many.npz"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, __file__, str(out)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as saved:
        return {key: saved[key] for key in saved.files}


@pytest.mark.slow
def test_one_device_on_onednn_equals_two_and_eight_devices_on_xla(many):
    """Same initial state, same batches, same steps; the runs differ in the order of their float32 sums only.

    oneDNN and XLA tile a convolution's inner products differently, and on a mesh BatchNorm's statistics, the loss
    and every gradient are per-device partial sums added by an all-reduce. Reordering a sum changes it by a few
    roundings of 2^-24 relative to the sum of the magnitudes: ~1e-7 here, the scale of the weights times 2^-24.
    One consequence is discrete: a ReLU input within rounding of zero can land on the other side in one run,
    switching the derivative at that element, so a convolution's weight gradient (and those upstream of it) gains
    or loses one of its n = batch x H x W terms. For terms of random sign the sum is ~sqrt(n) terms, so one such
    switch moves it by ~1/sqrt(n): 1/sqrt(16 x 4 x 4) = 6% at the last stage's 4x4 maps, less before; with ~1e6
    ReLU inputs per step and a density of ~0.4 per unit near zero, a few switches in 3 steps are expected. So
    each variable's change over the steps must agree within 10% of its size (one or two switches) plus 1e-6
    absolute (the roundings), and the losses within 2e-5 relative (they shift only after a switch, by the change
    of a few weights). Faults of the mesh (BatchNorm statistics over one device's 2 images, gradients summed
    instead of averaged) would change the updates by their own size or more.
    """
    one = train(jax.devices()[:1])
    if onednn.available():
        assert one["onednn"], "one device should have trained on oneDNN"
    initial = {key[len("init/"):]: value for key, value in one.items() if key.startswith("init/")}
    for devices in (2, 8):
        assert not many[f"{devices}/onednn"], f"{devices} devices: XLA's convolution expected"
        for name, start in initial.items():
            np.testing.assert_array_equal(many[f"{devices}/init/{name}"], start, err_msg=name)
            want, got = one[f"final/{name}"], many[f"{devices}/final/{name}"]
            np.testing.assert_allclose(got, want, rtol=0, atol=0.1 * np.abs(want - start).max() + 1e-6,
                                       err_msg=f"{devices} devices: {name}")
        for step in range(STEPS):
            np.testing.assert_allclose(many[f"{devices}/loss{step}"], one[f"loss{step}"], rtol=2e-5,
                                       err_msg=f"{devices} devices: loss of step {step}")


if __name__ == "__main__":  # the many-device half of the test, in a process of 8 simulated devices
    assert jax.device_count() == 8, jax.devices()
    np.savez(sys.argv[1], **{f"{count}/{key}": value for count in (2, 8)
                             for key, value in train(jax.devices()[:count]).items()})
