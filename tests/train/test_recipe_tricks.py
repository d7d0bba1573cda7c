"""Tests of the training-recipe settings of cnn_jax.train: EMA, lookahead, mixup and CutMix,
gradient clipping and gradient accumulation."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

from cnn_jax.train import (
    Checkpointer,
    CheckpointMismatchError,
    TrainConfig,
    create_train_state,
    eval_step,
    make_optimizer,
    make_schedule,
    make_train_step,
)
from cnn_jax.train.lookahead import lookahead
from cnn_jax.train.mixing import cutmix, mix_batch, mix_targets, mixup
from cnn_jax.train.state import TrainState
from cnn_jax.train.steps import soft_cross_entropy

NUM_CLASSES = 3
OLD_FIELDS = {"step", "params", "batch_stats", "opt_state", "rng"}  # the layout before the EMA


class TinyBN(nn.Module):
    """Conv -> BatchNorm -> Dense: params and batch statistics."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.8)(nn.Conv(4, (3, 3))(x)))
        return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1))


class TinyMLP(nn.Module):
    """No BatchNorm and no dropout: a batch's gradient is the mean of its examples'."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(NUM_CLASSES)(nn.tanh(nn.Dense(8)(x.reshape(x.shape[0], -1))))


def batches(n: int, size: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"image": jnp.asarray(rng.random((size, 6, 6, 1), np.float32)),
             "label": jnp.asarray(rng.integers(0, NUM_CLASSES, size), jnp.int32),
             "mask": jnp.ones(size)} for _ in range(n)]


def vector_state(tx, ema_decay: float = 0.0) -> TrainState:
    """A train state of one parameter vector and no model, for driving `apply_gradients`."""
    params = {"w": jnp.array([1.0, -2.0, 0.5])}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                      opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(0)),
                      apply_fn=None, tx=tx).with_ema(ema_decay)


def leaves(tree) -> dict:
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


# --- EMA -----------------------------------------------------------------------------------------

def test_the_ema_of_constant_weights_equals_them():
    state = create_train_state(TinyBN(), optax.sgd(0.1), (6, 6, 1), 0, ema_decay=0.9)
    step = jax.jit(lambda s: s.apply_gradients(jax.tree.map(jnp.zeros_like, s.params), s.batch_stats))
    for _ in range(5):
        state = step(state)
    assert state.ema.keys() == {"params", "batch_stats"}
    jax.tree.map(np.testing.assert_array_equal, state.ema, state.variables)
    jax.tree.map(np.testing.assert_array_equal, state.eval_variables, state.variables)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_ema_follows_its_closed_form_once_per_applied_update(accumulate):
    lr, decay, updates, grad = 0.1, 0.8, 6, jnp.array([1.0, -3.0, 0.25])
    tx = make_optimizer(TrainConfig(optimizer="sgd", momentum=0, learning_rate=lr,
                                    schedule="constant", accumulate_steps=accumulate), 100)
    state = vector_state(tx, decay)
    w0 = np.asarray(state.params["w"], np.float64)
    for _ in range(updates * accumulate):
        state = state.apply_gradients({"w": grad}, {})
    weights = [w0 - t * lr * np.asarray(grad, np.float64) for t in range(updates + 1)]
    closed = decay ** updates * w0 + (1 - decay) * sum(
        decay ** (updates - t) * weights[t] for t in range(1, updates + 1))
    np.testing.assert_allclose(state.params["w"], weights[-1], rtol=1e-6)
    np.testing.assert_allclose(state.ema["params"]["w"], closed, rtol=1e-6)


def test_with_the_ema_off_nothing_changes():
    config = TrainConfig(optimizer="sgd", schedule="constant")
    state = create_train_state(TinyBN(), make_optimizer(config, 10), (6, 6, 1), 0)
    assert state.ema is None and serialization.to_state_dict(state).keys() == OLD_FIELDS
    # The defaults wrap nothing around the optimizer: no extra state ...
    plain = optax.sgd(make_schedule(config, 10), momentum=config.momentum)
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(plain.init(state.params))
    # ... and a step is exactly the optimizer's update.
    grads = jax.tree.map(lambda p: jnp.cos(p * 3.0), state.params)
    updates, _ = plain.update(grads, plain.init(state.params), state.params)
    stepped = state.apply_gradients(grads, state.batch_stats)
    jax.tree.map(np.testing.assert_array_equal, stepped.params, optax.apply_updates(state.params, updates))
    jax.tree.map(np.testing.assert_array_equal, stepped.eval_variables, stepped.variables)


def test_evaluation_runs_on_the_ema():
    state = create_train_state(TinyBN(), optax.sgd(0.1), (6, 6, 1), 0, ema_decay=0.99)
    ema = jax.tree.map(lambda x: x * 0.5 + 0.1, state.variables)
    batch = batches(1, 8)[0]
    on_ema = eval_step(state.replace(ema=ema), batch)
    live = eval_step(state.replace(params=ema["params"], batch_stats=ema["batch_stats"]).with_ema(0), batch)
    np.testing.assert_array_equal(on_ema["predictions"], live["predictions"])
    np.testing.assert_allclose(on_ema["loss"], live["loss"], rtol=1e-6)
    assert float(on_ema["loss"]) != float(eval_step(state, batch)["loss"])


# --- lookahead -----------------------------------------------------------------------------------

def test_lookahead_with_alpha_1_is_the_inner_optimizer():
    inner = optax.sgd(0.05, momentum=0.9)
    wrapped = lookahead(inner, sync_period=3, alpha=1.0)
    params = jnp.array([0.3, -1.2, 2.0])
    fast, state, plain, plain_state = params, wrapped.init(params), params, inner.init(params)
    for _ in range(8):  # gradients that depend on the parameters
        updates, state = wrapped.update(jnp.sin(3 * fast), state, fast)
        fast = optax.apply_updates(fast, updates)
        updates, plain_state = inner.update(jnp.sin(3 * plain), plain_state, plain)
        plain = optax.apply_updates(plain, updates)
    np.testing.assert_allclose(fast, plain, rtol=1e-6)


def test_lookahead_syncs_every_k_updates_and_evaluates_on_the_slow_weights():
    lr, k, alpha, grad = 0.1, 3, 0.5, jnp.array([1.0, -2.0, 4.0])
    config = TrainConfig(optimizer="sgd", momentum=0, learning_rate=lr, schedule="constant",
                         lookahead_steps=k, lookahead_alpha=alpha)
    state = vector_state(make_optimizer(config, 100))
    w0 = np.asarray(state.params["w"])
    for t in range(1, 3 * k + 2):
        state = state.apply_gradients({"w": grad}, {})
        syncs, since = divmod(t, k)
        slow = w0 - syncs * alpha * k * lr * np.asarray(grad)  # each cycle moves alpha of k steps
        np.testing.assert_allclose(state.eval_variables["params"]["w"], slow, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(state.params["w"], slow - since * lr * np.asarray(grad),
                                   rtol=1e-6, atol=1e-7)


# --- mixup and CutMix ----------------------------------------------------------------------------

def test_cutmix_label_weight_equals_the_unpasted_area():
    images = jnp.stack([jnp.zeros((16, 12, 3)), jnp.ones((16, 12, 3))])  # partners: 0s and 1s

    def draw(key):
        lam_key, box_key = jax.random.split(key)
        mixed, lam = cutmix(box_key, images, jax.random.uniform(lam_key))
        return mixed, lam, mix_targets(jax.nn.one_hot(jnp.array([0, 1]), 2), lam)

    mixed, lam, targets = jax.jit(jax.vmap(draw))(jax.random.split(jax.random.key(0), 64))
    pasted = mixed[:, 0].mean((1, 2, 3))  # the fraction of image 0 that came from image 1
    np.testing.assert_allclose(pasted, 1 - lam, atol=1e-6)
    np.testing.assert_allclose(1 - mixed[:, 1].mean((1, 2, 3)), 1 - lam, atol=1e-6)
    np.testing.assert_allclose(targets[:, 0], np.stack([lam, 1 - lam], -1), atol=1e-6)
    assert float(pasted.min()) < 0.1 and float(pasted.max()) > 0.5  # boxes of many sizes


def test_mixup_at_lambda_1_is_the_identity():
    images = jnp.asarray(np.random.default_rng(0).random((4, 5, 5, 3), np.float32))
    np.testing.assert_array_equal(mixup(images, 1.0), images)
    np.testing.assert_array_equal(mixup(images, 0.0), images[::-1])
    np.testing.assert_allclose(mixup(images, 0.25), 0.25 * images + 0.75 * images[::-1], rtol=1e-6)


def test_mixing_is_deterministic_given_the_key_and_switches_with_its_probability():
    images = jnp.asarray(np.random.default_rng(0).random((4, 8, 8, 3), np.float32))
    key, other = jax.random.key(1), jax.random.key(2)
    both = mix_batch  # eagerly: its ops compile once for every combination of alphas
    first, second = both(key, images, 0.4, 1.0, 0.5), both(key, images, 0.4, 1.0, 0.5)
    jax.tree.map(np.testing.assert_array_equal, first, second)
    assert not np.array_equal(both(other, images, 0.4, 1.0, 0.5)[0], first[0])
    for switch_prob, alone in ((1.0, (0.0, 1.0)), (0.0, (0.4, 0.0))):  # always CutMix, never
        jax.tree.map(np.testing.assert_array_equal, both(key, images, 0.4, 1.0, switch_prob),
                     both(key, images, *alone, 0.5))


def test_the_train_step_takes_the_loss_on_the_mixed_soft_targets():
    state = create_train_state(TinyMLP(), optax.sgd(0.1), (6, 6, 1), 0)
    batch = batches(1, 8)[0]
    step = jax.jit(make_train_step(label_smoothing=0.1, mixup_alpha=0.4))
    _, metrics = step(state, batch)
    _, again = step(state, batch)
    assert float(metrics["loss"]) == float(again["loss"])  # the step's rng decides the mixing
    augment_key, _ = jax.random.split(state.step_key())  # as the train step derives its keys
    images, lam = mix_batch(jax.random.split(augment_key)[1], batch["image"], 0.4, 0.0, 0.5)
    targets = mix_targets(jax.nn.one_hot(batch["label"], NUM_CLASSES), lam)
    logits = state.apply_fn(state.variables, images, train=True)
    np.testing.assert_allclose(metrics["loss"], soft_cross_entropy(logits, targets, 0.1).mean(), rtol=1e-5)
    assert 0 < float(lam) < 1


# --- gradient clipping ---------------------------------------------------------------------------

def test_clipping_applies_the_update_of_the_clipped_gradient():
    params = {"Dense_0": {"kernel": jnp.full((2, 2), 0.5), "bias": jnp.zeros(2)}}
    config = TrainConfig(optimizer="nesterov", weight_decay=5e-4, schedule="constant")
    clipped_tx = make_optimizer(TrainConfig(optimizer="nesterov", weight_decay=5e-4,
                                            schedule="constant", grad_clip_norm=1.0), 10)
    plain_tx = make_optimizer(config, 10)
    clipped_state, plain_state = clipped_tx.init(params), plain_tx.init(params)
    for scale in (5.0, 3.0):  # global norm `scale`: clipped to 1
        grads = {"Dense_0": {"kernel": jnp.full((2, 2), scale / 2.5), "bias": jnp.array([scale * 0.6, 0.0])}}
        assert np.isclose(float(optax.global_norm(grads)), scale)
        clipped, clipped_state = clipped_tx.update(grads, clipped_state, params)
        plain, plain_state = plain_tx.update(jax.tree.map(lambda g, scale=scale: g / scale, grads), plain_state, params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), clipped, plain)
    small = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)  # norm 0.24: left as it is
    fresh_clipped, fresh_plain = clipped_tx.init(params), plain_tx.init(params)
    jax.tree.map(np.testing.assert_array_equal, clipped_tx.update(small, fresh_clipped, params)[0],
                 plain_tx.update(small, fresh_plain, params)[0])


# --- gradient accumulation -----------------------------------------------------------------------

def test_k_accumulated_steps_of_batch_b_equal_one_step_of_batch_kb():
    k, micro = 4, batches(8, 4)  # two updates of 16 examples each
    big = [{key: jnp.concatenate([b[key] for b in micro[i:i + k]]) for key in micro[0]}
           for i in range(0, len(micro), k)]
    base = dict(epochs=1, optimizer="sgd", momentum=0.9, learning_rate=0.5, schedule="cosine")
    accumulated_config = TrainConfig(**base, accumulate_steps=k)
    # The schedule counts updates: train step s runs at the rate of update s // k.
    big_schedule, micro_schedule = make_schedule(TrainConfig(**base), 2), make_schedule(accumulated_config, 8)
    assert [float(micro_schedule(s)) for s in range(8)] == [float(big_schedule(s // k)) for s in range(8)]
    assert float(big_schedule(1)) < float(big_schedule(0))

    def run(config, steps_per_epoch, data):
        state = create_train_state(TinyMLP(), make_optimizer(config, steps_per_epoch), (6, 6, 1), 0)
        start, step, trail = state.params, jax.jit(make_train_step()), []
        for batch in data:
            state, _ = step(state, batch)
            trail.append(state.params)
        return start, state, trail

    start, accumulated, trail = run(accumulated_config, 8, micro)
    _, single, _ = run(TrainConfig(**base), 2, big)
    for params in trail[:k - 1]:  # nothing moves until the k-th batch
        jax.tree.map(np.testing.assert_array_equal, params, start)
    assert int(accumulated.step) == 8 and int(single.step) == 2
    # The mean of k micro-batch means is the big batch's mean, up to float32 rounding.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 accumulated.params, single.params)
    assert not np.allclose(accumulated.params["Dense_0"]["kernel"], start["Dense_0"]["kernel"])


# --- all together: exact resume --------------------------------------------------------------------

def test_every_setting_resumes_exactly_from_a_checkpoint(tmp_path):
    config = TrainConfig(epochs=1, optimizer="nesterov", learning_rate=0.05, ema_decay=0.9,
                         lookahead_steps=2, mixup_alpha=0.2, cutmix_alpha=1.0, grad_clip_norm=0.5,
                         accumulate_steps=2)
    step = jax.jit(make_train_step(label_smoothing=0.1, mixup_alpha=config.mixup_alpha,
                                   cutmix_alpha=config.cutmix_alpha))

    tx, model = make_optimizer(config, 8), TinyBN()

    def fresh(seed):  # one tx, and placed (committed) like restored arrays: a single compilation
        return create_train_state(model, tx, (6, 6, 1), seed,
                                  jax.sharding.SingleDeviceSharding(jax.devices()[0]),
                                  ema_decay=config.ema_decay)

    data = batches(7, 4)
    straight = fresh(0)
    for batch in data:
        straight, _ = step(straight, batch)
    resumed = fresh(0)
    for batch in data[:3]:  # stops mid-accumulation, between lookahead syncs
        resumed, _ = step(resumed, batch)
    checkpoints = Checkpointer(str(tmp_path), max_to_keep=1)
    checkpoints.save(resumed)
    checkpoints.close()
    resumed = Checkpointer(str(tmp_path), max_to_keep=1).restore(fresh(1))
    for batch in data[3:]:
        resumed, _ = step(resumed, batch)
    saved = serialization.to_state_dict(straight)
    assert saved.keys() == OLD_FIELDS | {"ema"}
    want, got = leaves(saved), leaves(serialization.to_state_dict(resumed))
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_a_checkpoint_with_the_ema_and_a_state_without_it_are_told_apart(tmp_path):
    with_ema = create_train_state(TinyBN(), optax.sgd(0.1), (6, 6, 1), 0, ema_decay=0.9)
    for saved, target, where in ((with_ema, with_ema.with_ema(0), "checkpoint"),
                                 (with_ema.with_ema(0), with_ema, "model")):
        directory = str(tmp_path / where)
        checkpoints = Checkpointer(directory, max_to_keep=1)
        checkpoints.save(saved)
        checkpoints.close()
        with pytest.raises(CheckpointMismatchError, match=rf"ema/params/BatchNorm_0/bias: only in the {where}"):
            Checkpointer(directory, max_to_keep=1).restore(target)


@pytest.mark.parametrize("field, value", [
    ("ema_decay", 1.0), ("ema_decay", -0.1), ("lookahead_steps", -1), ("lookahead_alpha", 0.0),
    ("lookahead_alpha", 1.5), ("mixup_alpha", -0.2), ("cutmix_alpha", -1.0),
    ("mixup_switch_prob", 1.2), ("grad_clip_norm", -1.0), ("grad_clip_norm", float("inf")),
    ("accumulate_steps", 0)])
def test_config_rejects_bad_recipe_settings_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field}=.* is invalid: use"):
        TrainConfig(**{field: value})


def test_accumulating_more_steps_than_the_run_has_is_refused():
    with pytest.raises(ValueError, match="accumulate_steps=8 exceeds the 6 train steps"):
        make_optimizer(TrainConfig(epochs=2, accumulate_steps=8), 3)
