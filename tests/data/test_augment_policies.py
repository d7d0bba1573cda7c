"""Tests of RandAugment, TrivialAugment and random-resized-crop (cnn_jax.data.augment)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.data import augment as aug

RNG = np.random.default_rng(0)
# 8-bit levels as the pipeline makes them, with exact 0s and 1s; not square, so H and W differ.
IMAGE = np.divide(RNG.integers(0, 256, (12, 10, 3)).astype(np.uint8), np.float32(255),
                  dtype=np.float32)
IMAGE[0, 0], IMAGE[1, 1] = 0.0, 1.0
# Low contrast and enough pixels (equalize leaves images of few pixels alone, as PIL does).
DIM = np.divide(RNG.integers(64, 192, (32, 32, 3)).astype(np.uint8), np.float32(255), dtype=np.float32)
BATCH = np.divide(RNG.integers(0, 256, (6, 16, 16, 3)).astype(np.uint8), np.float32(255),
                  dtype=np.float32)
# Where each op is the identity: magnitude 0, but 8 bits for posterize and threshold 1 for solarize.
NEUTRAL = {name: 0.0 for name in aug.POLICY_OPS if name not in ("autocontrast", "equalize")}
NEUTRAL.update(posterize=8.0, solarize=1.0)


@pytest.mark.parametrize("name", list(aug.POLICY_OPS))
def test_each_op_keeps_shape_dtype_and_range_at_every_magnitude(name):
    magnitudes = jnp.concatenate([table[name] for table in (
        aug.policy_magnitudes(policy, 31, 12, 10) for policy in ("randaugment", "trivialaugment"))])
    signed = jnp.concatenate([magnitudes, -magnitudes]) if name in aug._SIGNED else magnitudes
    out = jax.jit(jax.vmap(aug.POLICY_OPS[name], in_axes=(None, 0)))(jnp.asarray(IMAGE), signed)
    assert out.shape == (len(signed), *IMAGE.shape) and out.dtype == jnp.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    if name != "identity":  # the op changes a dim image at its strongest setting
        assert not np.array_equal(aug.POLICY_OPS[name](jnp.asarray(DIM), magnitudes[-1]), DIM)


@pytest.mark.parametrize("name", sorted(NEUTRAL))
def test_ops_are_the_identity_at_their_neutral_magnitude_which_is_bin_0(name):
    np.testing.assert_array_equal(aug.POLICY_OPS[name](jnp.asarray(IMAGE), NEUTRAL[name]), IMAGE)
    random = RNG.random((7, 9, 3), dtype=np.float32)  # off the 8-bit grid too
    np.testing.assert_array_equal(aug.POLICY_OPS[name](jnp.asarray(random), NEUTRAL[name]), random)
    for policy in ("randaugment", "trivialaugment"):
        assert float(aug.policy_magnitudes(policy, 31, 12, 10)[name][0]) == NEUTRAL[name]


def test_ops_do_what_they_are_named_for():
    square = jnp.asarray(IMAGE[:10])
    for degrees, turns in ((90.0, 1), (-90.0, -1)):
        np.testing.assert_array_equal(aug.POLICY_OPS["rotate"](square, degrees), jnp.rot90(square, turns))
    shifted = aug.POLICY_OPS["translate_x"](square, 3.0)
    np.testing.assert_array_equal(shifted[:, 3:], square[:, :-3])
    np.testing.assert_array_equal(shifted[:, :3], 0.0)
    np.testing.assert_allclose(aug.POLICY_OPS["posterize"](square, 1.0),
                               np.where(square >= 128 / 255, 128 / 255, 0.0), atol=1e-6)
    np.testing.assert_array_equal(aug.POLICY_OPS["solarize"](square, 0.5),
                                  np.where(square > 0.5, 1 - square, square))
    np.testing.assert_allclose(aug.POLICY_OPS["brightness"](square, -0.5), square * 0.5, rtol=1e-6)
    dim = square * 0.5 + 0.25
    stretched = aug.POLICY_OPS["autocontrast"](dim, 0.0)
    np.testing.assert_allclose(stretched.min((0, 1)), 0.0, atol=1e-6)
    np.testing.assert_allclose(stretched.max((0, 1)), 1.0, atol=1e-6)


@pytest.mark.parametrize("name, pil_args", [("equalize", ()), ("posterize", (3,))])
def test_8_bit_ops_match_pil(name, pil_args):
    image_lib, image_ops = pytest.importorskip("PIL.Image"), pytest.importorskip("PIL.ImageOps")
    levels = np.round(DIM ** 3 * 255).astype(np.uint8)  # dark and narrow: equalizing spreads it
    pil = getattr(image_ops, name)(image_lib.fromarray(levels), *pil_args)
    want = np.asarray(pil, np.float32) / 255
    got = aug.POLICY_OPS[name](jnp.asarray(levels / np.float32(255)), 3.0)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert name != "equalize" or float(got.max()) - float(got.min()) > 0.9


@pytest.mark.parametrize("names", [["randaugment"], ["trivialaugment"], ["random_resized_crop"]])
def test_policies_are_per_example_deterministic_per_key_and_vmap_jit_safe(names):
    augment = aug.make_augment(names)
    run = jax.jit(augment)
    key, other = jax.random.key(3), jax.random.key(4)
    same = np.repeat(BATCH[:1], 6, axis=0)
    out = run(key, same)
    assert out.shape == same.shape and out.dtype == jnp.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    np.testing.assert_array_equal(run(key, same), out)  # the key decides everything
    assert not np.array_equal(run(other, same), out)
    assert len({np.asarray(o).tobytes() for o in out}) > 1  # each example draws its own
    if names != ["trivialaugment"]:
        return  # randaugment shares trivialaugment's code; each compilation costs seconds
    keys = jax.random.split(key, 2)
    stacked = jax.jit(jax.vmap(augment))(keys, jnp.stack([same, same[::-1]]))
    np.testing.assert_allclose(stacked[1], run(keys[1], same[::-1]), atol=1e-6)


def test_random_resized_crop_keeps_the_size_and_is_the_identity_at_full_scale_and_ratio_1():
    key = jax.random.key(0)
    wide = jnp.asarray(RNG.random((3, 12, 20, 3), dtype=np.float32))
    assert jax.eval_shape(aug.random_resized_crop, key, wide).shape == wide.shape
    full = jax.jit(lambda k, x: aug.random_resized_crop(k, x, (1, 1), (1, 1)))
    np.testing.assert_array_equal(full(key, jnp.asarray(BATCH)), BATCH)


def test_random_resized_crop_boxes_follow_the_scale_and_ratio_ranges():
    height, width = 40, 30
    boxes = jax.jit(jax.vmap(lambda k: aug._crop_box(k, height, width, (0.08, 1.0), (3 / 4, 4 / 3))))(
        jax.random.split(jax.random.key(1), 500))
    top, left, box_h, box_w = (np.asarray(b) for b in boxes)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + box_h <= height).all() and (left + box_w <= width).all()
    fraction, ratio = box_h * box_w / (height * width), box_w / box_h
    # Rounding each side to whole pixels moves area and ratio by a little.
    assert fraction.min() > 0.06 and ratio.min() > 0.65 and ratio.max() < 1.5
    assert fraction.min() < 0.2 and fraction.max() > 0.8  # the whole range is drawn


def test_make_augment_checks_the_policy_settings_when_built():
    assert aug.make_augment(["crop", "flip", "trivialaugment"]) is not None
    for bad in (dict(randaugment_magnitude=31), dict(randaugment_ops=0), dict(magnitude_bins=1)):
        with pytest.raises(ValueError, match="RandAugment|bins"):
            aug.make_augment(["randaugment"], **bad)
    with pytest.raises(ValueError, match="scale"):
        aug.make_augment(["random_resized_crop"], resized_crop_scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="ratio"):
        aug.make_augment(["random_resized_crop"], resized_crop_ratio=(0.0, 1.0))
