"""GPU and TPU readiness without the hardware: every zoo model's jitted train and eval steps lower with
``jax.export`` for the cuda, rocm and tpu platforms, on one device and (train step) over a mesh of 8 simulated devices,
and no lowered module calls code that only a CPU has.

How a lowering for another platform picks its kernels: the kernel mode (``ops.kernels``) is a trace-time setting
and stays "fast"; where it chooses a CPU kernel (oneDNN's convolution and fused epilogue, shifted multiply-adds),
``cnn_jax.ops.fast`` stages the choice as ``lax.platform_dependent(cpu=..., default=XLA's convolution)``, and JAX
lowers only the branches of the platforms asked for. So a lowering for cuda, rocm or tpu holds XLA's convolution and
none of the oneDNN FFI targets, whatever this CPU host would run; the positive control below shows the same trace
lowered for cpu holds them. The hand-written derivatives (BatchNorm's, max pooling's) and the hashed dropout mask
are plain JAX ops, which every platform compiles.

Only abstract shapes are traced (``jax.eval_shape``), nothing is compiled, so a model costs its traces.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

from cnn_jax.models import get_model, list_models, model_spec
from cnn_jax.ops import onednn
from cnn_jax.ops.onednn import build
from cnn_jax.train import create_train_state, eval_step, make_train_step
from cnn_jax.train import sharding as sharding_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLATFORMS = ("cuda", "rocm", "tpu")
ONEDNN_TARGETS = (build.TARGET, build.FUSED_TARGET)
# XLA's own sharding annotations, which every platform's partitioner reads: the only custom calls allowed.
PORTABLE_TARGETS = {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"}
NUM_CLASSES = 10
# One model per kernel path in the default run: the one-channel shifted convolution and max pooling (simple_cnn),
# ConvBN with residual additions and the fused epilogue (resnet20), depthwise convolutions, ReLU6 and dropout
# (mobilenet_v2). The others are deeper or wider arrangements of the same layers, lowered in the slow run (each
# model costs its traces, seconds apiece for the deep ones).
DEFAULT_MODELS = ("simple_cnn", "resnet20", "mobilenet_v2")
MODELS = [pytest.param(name, marks=() if name in DEFAULT_MODELS else pytest.mark.slow) for name in list_models()]
# Over the mesh every model runs XLA's kernels (oneDNN serves one device only), so the default run lowers one.
DEFAULT_MESH_MODELS = ("resnet20",)
MESH_MODELS = [pytest.param(name, marks=() if name in DEFAULT_MESH_MODELS else pytest.mark.slow)
               for name in list_models()]


def custom_call_targets(text: str) -> set:
    """The targets of every custom call in a StableHLO module's text."""
    return set(re.findall(r"custom_call @([\w.$-]+)", text)) | set(re.findall(r'call_target_name = "([^"]*)"', text))


def abstract_inputs(name: str, batch: int, dtype=jnp.float32):
    """The abstract train state of zoo model ``name`` (SGD with momentum) and an abstract train and eval batch of
    ``batch`` images: of its designed size up to 32 pixels (small inputs choose other kernels, e.g. simple_cnn's
    one-channel convolution), of its smallest accepted size for the ImageNet models."""
    spec = model_spec(name)
    model = get_model(name, NUM_CLASSES, **({} if dtype == jnp.float32 else {"dtype": dtype}))
    size = spec.input_shape[0] if spec.input_shape[0] <= 32 else spec.min_size
    image_shape = (size, size, spec.input_shape[2])
    state = jax.eval_shape(lambda: create_train_state(model, optax.sgd(0.1, momentum=0.9), image_shape, seed=0))
    images = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    return state, {"image": images, "label": labels}, {"image": images, "label": labels, "mask": labels}


def exported(function, *args, platforms=PLATFORMS, **jit_kwargs) -> jax.export.Exported:
    result = jax.export.export(jax.jit(function, **jit_kwargs), platforms=platforms)(*args)
    assert tuple(result.platforms) == tuple(platforms)
    return result


def lowered_text(function, *args, platforms=PLATFORMS) -> str:
    return exported(function, *args, platforms=platforms).mlir_module()


def assert_portable(text: str, what: str) -> None:
    """No oneDNN call and no custom call but XLA's sharding annotations; XLA's convolution where there is one."""
    targets = custom_call_targets(text)
    assert targets <= PORTABLE_TARGETS, f"{what}: CPU-only custom calls {sorted(targets - PORTABLE_TARGETS)}"
    assert not [target for target in ONEDNN_TARGETS if target in text], what


@pytest.mark.parametrize("name", MODELS)
def test_train_and_eval_steps_lower_for_cuda_rocm_and_tpu_without_cpu_custom_calls(name):
    state, train_batch, eval_batch = abstract_inputs(name, batch=2)
    assert_portable(lowered_text(make_train_step(), state, train_batch), f"{name} train step")
    assert_portable(lowered_text(eval_step, state, eval_batch), f"{name} eval step")


def test_bfloat16_steps_lower_for_cuda_rocm_and_tpu_without_cpu_custom_calls():
    """Half precision chooses its CPU kernels by other rules (oneDNN where the CPU has bf16 instructions, shifted
    multiply-adds for depthwise convolutions elsewhere): none of them may reach another platform either."""
    state, train_batch, _ = abstract_inputs("resnet20", batch=2, dtype=jnp.bfloat16)
    assert_portable(lowered_text(make_train_step(), state, train_batch), "resnet20 bf16 train step")
    state, _, eval_batch = abstract_inputs("mobilenet_v2", batch=2, dtype=jnp.bfloat16)
    assert_portable(lowered_text(eval_step, state, eval_batch), "mobilenet_v2 bf16 eval step")


@pytest.mark.skipif(not onednn.available(), reason="the oneDNN kernel is not built here (no g++ or wheels)")
def test_the_same_steps_lowered_for_cpu_hold_the_onednn_calls():
    """The positive control: this host's trace does choose oneDNN (convolution and, in evaluation, the fused
    epilogue), so their absence above is the platform seam at work, not a trace without them."""
    if len(jax.devices("cpu")) != 1:
        pytest.skip("oneDNN serves one CPU device only; this process has several")
    state, train_batch, eval_batch = abstract_inputs("resnet20", batch=2)
    # jit's own lowering for this host (jax.export refuses a custom call it cannot promise to keep running)
    assert build.TARGET in jax.jit(make_train_step()).lower(state, train_batch).as_text()
    assert build.FUSED_TARGET in jax.jit(eval_step).lower(state, eval_batch).as_text()


@pytest.mark.skipif(not onednn.available(), reason="the oneDNN kernel is not built here (no g++ or wheels)")
def test_one_module_for_cpu_and_cuda_in_mode_fast():
    """JAX lowers each platform_dependent branch for every platform of a module: the oneDNN primitives lower to
    XLA's convolution off the CPU, so one module serves the CPU (on oneDNN) and cuda."""
    if len(jax.devices("cpu")) != 1:
        pytest.skip("oneDNN serves one CPU device only; this process has several")
    state, train_batch, eval_batch = abstract_inputs("resnet20", batch=2)
    evaluation = jax.jit(eval_step).trace(state, eval_batch).lower(lowering_platforms=("cpu", "cuda")).as_text()
    training = jax.jit(make_train_step()).trace(state, train_batch).lower(lowering_platforms=("cpu", "cuda"))
    assert build.FUSED_TARGET in evaluation and build.TARGET in training.as_text()


def lower_over_the_mesh(names, out: str) -> None:
    """Writes, for each zoo model of ``names``, what its train step over every device, lowered for cuda, rocm and
    tpu, holds (run in a process of 8 simulated devices: the count is fixed when JAX starts)."""
    mesh = sharding_lib.make_mesh()
    on_all, on_batch = sharding_lib.replicated(mesh), sharding_lib.batch_sharding(mesh)
    results = {}
    for name in names:
        state, batch, _ = abstract_inputs(name, batch=16)
        try:
            step = exported(make_train_step(), state, batch, in_shardings=(on_all, on_batch),
                            out_shardings=(on_all, on_all), donate_argnums=0)
        except Exception as error:  # noqa: BLE001 -- reported per model by the test that reads this file
            results[name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
            continue
        text = step.mlir_module()
        # The images split along the mesh axis: Shardy's annotation (the default partitioner) or GSPMD's.
        split = f'{{"{sharding_lib.DATA_AXIS}"}}' in text or "devices=[8" in text
        results[name] = {"targets": sorted(custom_call_targets(text)), "split": split,
                         "onednn": [t for t in ONEDNN_TARGETS if t in text], "devices": step.nr_devices}
    with open(out, "w") as file:
        json.dump(results, file)


def _lower_over_eight_devices(names, out) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, __file__, str(out), *names], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as file:
        return json.load(file)


@pytest.fixture(scope="module")
def mesh_lowering(tmp_path_factory):
    """``mesh_lowering(name)``: what ``lower_over_the_mesh`` found for zoo model ``name``; the models of the default
    run and those of the slow run are lowered in one subprocess each, when first asked for."""
    found = {}

    def lookup(name):
        if name not in found:
            group = [n for n in list_models() if (n in DEFAULT_MESH_MODELS) == (name in DEFAULT_MESH_MODELS)]
            found.update(_lower_over_eight_devices(group, tmp_path_factory.mktemp("mesh") / "lowerings.json"))
        return found[name]

    return lookup


@pytest.mark.parametrize("name", MESH_MODELS)
def test_train_step_over_eight_devices_lowers_for_cuda_rocm_and_tpu(mesh_lowering, name):
    result = mesh_lowering(name)
    assert "error" not in result, result.get("error")
    assert result["devices"] == 8 and result["split"]  # the batch laid out over the mesh, not on one device
    assert set(result["targets"]) <= PORTABLE_TARGETS and not result["onednn"], result


def test_custom_call_targets_are_read_from_both_spellings():
    """The check above would pass on a module whose calls it cannot read: it reads the pretty and generic forms."""
    pretty = 'stablehlo.custom_call @cnn_jax_conv(%0, %1) {api_version = 4 : i32}'
    generic = '"stablehlo.custom_call"(%0) {call_target_name = "lapack_sgesdd_ffi"} : (tensor<f32>) -> tensor<f32>'
    assert custom_call_targets(pretty + "\n" + generic) == {"cnn_jax_conv", "lapack_sgesdd_ffi"}


if __name__ == "__main__":  # the 8-device half of test_train_step_over_eight_devices_lowers_for_cuda_rocm_and_tpu
    assert jax.device_count() == 8, jax.devices()
    lower_over_the_mesh(sys.argv[2:], sys.argv[1])
