"""cnn_jax's steps, as users run them: the training engine's jitted `train_step` (donated state,
SGD from `make_optimizer`) and, for inference, the engine's jitted evaluation apply (`state.apply_fn`, which is
`cnn_jax.fused.fused_apply(model)`: each evaluation ConvBN as one kernel where the CPU allows). `spec.dtype ==
"bfloat16"`
builds the model as `--half_precision` does: bf16 compute, float32 params, optimizer state and loss.

The persistent compilation cache is switched off, so `compile_s` is a cold compile, unless the spec names a cache
directory (`benchmark.py --compilation_cache=warm`): then every compilation is cached there, as the experiments
cache theirs, and a second process finds them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bench_lib import LEARNING_RATE, MOMENTUM, SEED, RecordSpec, Runner, random_batch
from cnn_jax import freed_memory, models
from cnn_jax.train import TrainConfig, create_train_state, make_optimizer, make_train_step


def make_model(spec: RecordSpec):
    """cnn_jax's `spec.model`, computing in `spec.dtype` with float32 params."""
    return models.get_model(spec.model, spec.num_classes, dtype=jnp.dtype(spec.dtype))


def build(spec: RecordSpec) -> Runner:
    if spec.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", spec.compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    else:
        jax.config.update("jax_enable_compilation_cache", False)
    freed_memory.release_after_compiles()  # as the training engine runs: cold peak memory depends on it
    model = make_model(spec)
    config = TrainConfig(epochs=1, learning_rate=LEARNING_RATE, optimizer="sgd", momentum=MOMENTUM,
                         schedule="constant", progress_bar=False, tensorboard=False)
    state = create_train_state(model, make_optimizer(config, steps_per_epoch=1), spec.input_shape, SEED)
    images, labels = (jnp.asarray(a) for a in random_batch(spec))
    latest = {}

    if spec.mode == "train":
        train_step = jax.jit(make_train_step(), donate_argnums=0)
        batch = {"image": images, "label": labels}
        latest["state"] = state

        def step():
            latest["state"], _ = train_step(latest["state"], batch)
    else:
        infer = jax.jit(lambda variables, x: state.apply_fn(variables, x, train=False))

        def step():
            latest["logits"] = infer(state.variables, images)

    return Runner(step, lambda: jax.block_until_ready(latest))
