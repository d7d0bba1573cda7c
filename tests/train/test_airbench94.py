"""airbench94's network options (cnn_jax.models.airbench) and parameter groups (cnn_jax.train.airbench)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import models, ops
from cnn_jax.models.airbench import dirac_init
from cnn_jax.train import TrainConfig
from cnn_jax.train.airbench import AirbenchStart, is_norm_bias
from experiments.cifar10_fast import AIRBENCH94_NET

SMALL = {"widths": (8, 16, 16)}


@pytest.mark.parametrize("inputs,outputs", [(3, 8), (8, 8), (8, 4)])
def test_dirac_init_passes_the_first_channels_through(inputs, outputs):
    kernel = dirac_init()(jax.random.key(0), (3, 3, inputs, outputs))
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, inputs))
    y = ops.conv2d(x, kernel, padding="SAME")
    n = min(inputs, outputs)
    np.testing.assert_array_equal(y[..., :n], x[..., :n])
    if outputs > n:  # the other filters keep PyTorch's default: uniform, variance 1 / (3 fan_in)
        rest = np.asarray(dirac_init()(jax.random.key(0), (3, 3, 64, 128))[..., 64:])
        bound = 1 / np.sqrt(9 * 64)
        assert np.abs(rest).max() <= bound and np.var(rest) == pytest.approx(bound ** 2 / 3, rel=0.05)


def test_airbench94_net_has_its_shapes_and_no_batchnorm_scales():
    model = models.get_model("airbench", 10, **SMALL, **AIRBENCH94_NET)
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
    variables = model.init(jax.random.key(1), x)
    _, state = model.apply(variables, x, mutable=["intermediates"])
    shapes = {k: v[0].shape for k, v in state["intermediates"].items()}
    assert (shapes["stage1"], shapes["stage2"], shapes["stage3"]) == ((2, 15, 15, 8), (2, 7, 7, 16), (2, 3, 3, 16))
    flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    names = ["/".join(k.key for k in path) for path, _ in flat]
    assert not [n for n in names if n.endswith("scale")]
    assert {n for n in names if n.endswith("bias")} == {
        "stem/bias", *(f"stage{s}_bn0/bias" for s in (1, 2, 3)), *(f"stage{s}_conv1/bn/bias" for s in (1, 2, 3))}


def test_logit_scale_scales_the_logits_and_nothing_else():
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
    plain = models.get_model("airbench", 10, **SMALL)
    scaled = models.get_model("airbench", 10, **SMALL, logit_scale=1 / 9)
    variables = plain.init(jax.random.key(1), x)
    np.testing.assert_allclose(scaled.apply(variables, x), plain.apply(variables, x) / 9, rtol=1e-6, atol=1e-7)


def test_batchnorm_momentum_sets_the_running_average():
    """From zero running means, one training step keeps (1 - momentum) of the batch mean: 0.4 at airbench94's
    0.6, four times the 0.1 at the default 0.9."""
    x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3))
    means = {}
    for momentum in (0.6, 0.9):
        model = models.get_model("airbench", 10, **SMALL, bn_momentum=momentum, bn_scale=False)
        variables = model.init(jax.random.key(1), x)
        _, new = model.apply(variables, x, train=True, mutable=["batch_stats"])
        means[momentum] = new["batch_stats"]["stage3_bn0"]["mean"]
    assert np.abs(means[0.9]).max() > 0
    np.testing.assert_allclose(means[0.6], 4 * means[0.9], rtol=1e-4, atol=1e-6)


def test_norm_biases_are_the_batchnorm_offsets():
    model = models.get_model("airbench", 10, **SMALL, **AIRBENCH94_NET)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    found = {"/".join(k.key for k in path) for path, _ in flat if is_norm_bias(path)}
    assert found == {*(f"stage{s}_bn0/bias" for s in (1, 2, 3)), *(f"stage{s}_conv1/bn/bias" for s in (1, 2, 3))}


def _one_update(start, config, params, grads):
    tx = start.optimizer(config, steps_per_epoch=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


def test_airbench_groups_scale_the_norm_bias_rate_keep_its_decay_and_freeze_the_stem_kernel():
    params = {"stem": {"kernel": jnp.full((2, 2, 3, 24), 0.5), "bias": jnp.full((24,), 0.5)},
              "stage1_bn0": {"bias": jnp.full((8,), 0.5)},
              "head": {"kernel": jnp.full((16, 10), 0.5)}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    config = TrainConfig(learning_rate=0.2, optimizer="sgd", momentum=0.0, schedule="constant", weight_decay=0.01)
    start = AirbenchStart({}, whitened=True, norm_bias_scale=64.0)
    updates = _one_update(start, config, params, grads)
    np.testing.assert_array_equal(updates["stem"]["kernel"], 0)  # frozen: no step, no decay
    np.testing.assert_allclose(updates["head"]["kernel"], -0.2 * (0.1 + 0.01 * 0.5), rtol=1e-6)
    np.testing.assert_allclose(updates["stem"]["bias"], -0.2 * (0.1 + 0.01 * 0.5), rtol=1e-6)  # biases decay too
    # 64x the rate on the gradient, the same decay per step as the others.
    np.testing.assert_allclose(updates["stage1_bn0"]["bias"], -0.2 * (64 * 0.1 + 0.01 * 0.5), rtol=1e-6)


def test_without_the_scale_the_start_keeps_the_engines_optimizer():
    params = {"stem": {"kernel": jnp.full((2, 2, 3, 24), 0.5), "bias": jnp.full((24,), 0.5)},
              "head": {"kernel": jnp.full((16, 10), 0.5)}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    config = TrainConfig(learning_rate=0.2, optimizer="nesterov", momentum=0.9, schedule="constant",
                         weight_decay=0.01)
    updates = _one_update(AirbenchStart({}, whitened=True), config, params, grads)
    reference, _ = optax.chain(optax.add_decayed_weights(0.01), optax.sgd(0.2, 0.9, nesterov=True)).update(
        grads["head"], optax.chain(optax.add_decayed_weights(0.01), optax.sgd(0.2, 0.9, nesterov=True)).init(
            params["head"]), params["head"])
    np.testing.assert_allclose(updates["head"]["kernel"], reference["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(updates["stem"]["kernel"], 0)
    np.testing.assert_allclose(updates["stem"]["bias"], -0.2 * 1.9 * 0.1, rtol=1e-6)  # no decay on biases here


def test_airbench_groups_refuse_adaptive_optimizers():
    with pytest.raises(ValueError, match="use --optimizer=nesterov"):
        AirbenchStart({}, norm_bias_scale=64.0).optimizer(TrainConfig(optimizer="adam"), 10)
