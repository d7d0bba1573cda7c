"""Tests of cnn_jax.data: splits and batching on synthetic arrays, loading the shared TFDS data,
the offline error, on-device augmentation and device prefetch."""
import pathlib
import socket
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import SHARED_DATA, examples
from hypothesis import given
from hypothesis import strategies as st

from cnn_jax import data

NUM_EXAMPLES, NUM_CLASSES = 600, 10
CLASS_NAMES = tuple(f"c{i}" for i in range(NUM_CLASSES))
SHARED_TFDS = pathlib.Path(SHARED_DATA)


def _tagged_arrays(num, offset=0, size=6):
    """uint8 images whose first two pixels encode a unique example id, so batches can be traced back."""
    ids = np.arange(offset, offset + num)
    images = np.random.default_rng(offset).integers(0, 256, (num, size, size, 3), dtype=np.uint8)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = ids % 256, ids // 256
    return images, (ids % NUM_CLASSES).astype(np.int64)


def _ids(images):
    pixels = np.rint(np.asarray(images) * 255).astype(np.int64)
    return pixels[:, 0, 0, 0] + 256 * pixels[:, 0, 1, 0]


def _synthetic(with_test=True, **config):
    config = data.DataConfig("synthetic", **{"batch_size": 32, **config})
    test = _tagged_arrays(200, offset=NUM_EXAMPLES) if with_test else None
    return data.from_arrays(config, CLASS_NAMES, _tagged_arrays(NUM_EXAMPLES), test)


def _epoch_ids(dataset, epoch, start_step=0):
    return [_ids(batch["image"]) for batch in dataset.train_batches(epoch, start_step)]


def _eval_ids(dataset, split):
    return np.concatenate([_ids(b["image"])[b["mask"] > 0] for b in dataset.eval_batches(split)])


# ---- splits and batching (synthetic arrays) ----

def test_train_batches_have_the_contracted_shapes_types_and_range():
    dataset = _synthetic(validation_fraction=0.1)
    batches = list(dataset.train_batches(0))
    assert len(batches) == dataset.steps_per_epoch == dataset.info.num_train // 32
    for batch in batches:
        assert set(batch) == {"image", "label"}
        assert batch["image"].shape == (32, 6, 6, 3) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
        assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
        np.testing.assert_array_equal(batch["label"], _ids(batch["image"]) % NUM_CLASSES)


def test_train_order_is_a_function_of_seed_and_epoch():
    dataset = _synthetic()
    first, again = _epoch_ids(dataset, 3), _epoch_ids(_synthetic(), 3)
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    assert not np.array_equal(np.concatenate(first), np.concatenate(_epoch_ids(dataset, 4)))
    assert not np.array_equal(np.concatenate(first), np.concatenate(_epoch_ids(_synthetic(seed=1), 3)))
    epoch = np.concatenate(first)
    assert len(np.unique(epoch)) == len(epoch) == dataset.steps_per_epoch * 32  # no example twice in an epoch


def test_start_step_replays_the_remaining_batches_of_the_epoch():
    dataset = _synthetic()
    full = _epoch_ids(dataset, 2)
    resumed = _epoch_ids(dataset, 2, start_step=5)
    assert len(resumed) == len(full) - 5
    for a, b in zip(full[5:], resumed):
        np.testing.assert_array_equal(a, b)
    assert _epoch_ids(dataset, 2, start_step=dataset.steps_per_epoch) == []


@pytest.mark.parametrize("eval_batch_size", [64, 200, 7])
def test_eval_batches_cover_each_example_once_with_fixed_shape(eval_batch_size):
    dataset = _synthetic(validation_fraction=0.25, eval_batch_size=eval_batch_size)
    for split, expected in (("test", np.arange(NUM_EXAMPLES, NUM_EXAMPLES + 200)),
                            ("validation", None)):
        batches = list(dataset.eval_batches(split))
        assert all(b["image"].shape[0] == b["label"].shape[0] == b["mask"].shape[0] == eval_batch_size
                   for b in batches)
        assert sum(b["mask"].sum() for b in batches) == getattr(dataset.info, f"num_{split}")
        padding = batches[-1]["mask"] == 0
        assert np.all(batches[-1]["image"][padding] == 0)
        ids = _eval_ids(dataset, split)
        assert len(np.unique(ids)) == len(ids)
        if expected is not None:
            np.testing.assert_array_equal(np.sort(ids), expected)


def test_validation_is_a_seeded_slice_disjoint_from_train():
    dataset = _synthetic(validation_fraction=0.2, batch_size=1)
    train = np.concatenate(_epoch_ids(dataset, 0))
    validation = _eval_ids(dataset, "validation")
    assert dataset.info.num_validation == len(validation) == 120 and dataset.info.num_train == 480
    assert not set(train) & set(validation)
    assert set(train) | set(validation) == set(range(NUM_EXAMPLES))
    other_seed = _eval_ids(_synthetic(validation_fraction=0.2, seed=5), "validation")
    assert set(other_seed) != set(validation)
    np.testing.assert_array_equal(validation, _eval_ids(_synthetic(validation_fraction=0.2), "validation"))


def test_num_train_examples_keeps_a_subset_of_the_train_split():
    full = _synthetic(validation_fraction=0.1, batch_size=1)
    subset = _synthetic(validation_fraction=0.1, batch_size=1, num_train_examples=100)
    assert subset.info.num_train == 100 and subset.steps_per_epoch == 100
    subset_ids = set(np.concatenate(_epoch_ids(subset, 0)))
    assert len(subset_ids) == 100 and subset_ids <= set(np.concatenate(_epoch_ids(full, 0)))
    np.testing.assert_array_equal(_eval_ids(subset, "validation"), _eval_ids(full, "validation"))


def test_without_a_test_split_a_fixed_fifth_of_train_is_held_out():
    datasets = [_synthetic(with_test=False, seed=seed, validation_fraction=0.1) for seed in (0, 1)]
    tests = [_eval_ids(d, "test") for d in datasets]
    assert datasets[0].info.num_test == round(data.TEST_FRACTION * NUM_EXAMPLES)
    np.testing.assert_array_equal(tests[0], tests[1])  # the same test set whatever the seed
    train = np.concatenate(_epoch_ids(datasets[0], 0))
    assert not set(tests[0]) & (set(train) | set(_eval_ids(datasets[0], "validation")))


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size"),
    (dict(eval_batch_size=-1), "eval_batch_size"),
    (dict(validation_fraction=1.0), "validation_fraction"),
    (dict(image_size=(32,)), "image_size"),
    (dict(num_train_examples=0), "num_train_examples"),
    (dict(dataset=""), "dataset"),
])
def test_data_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.DataConfig(**{"dataset": "mnist", **kwargs})


def test_bad_requests_get_clear_errors():
    with pytest.raises(ValueError, match="num_train_examples"):
        _synthetic(num_train_examples=NUM_EXAMPLES + 1)
    with pytest.raises(ValueError, match="batch_size"):
        _synthetic(batch_size=NUM_EXAMPLES + 1)
    with pytest.raises(ValueError, match="image_size"):
        _synthetic(image_size=(8, 8))
    dataset = _synthetic()
    with pytest.raises(ValueError, match="validation_fraction"):
        dataset.eval_batches("validation")
    with pytest.raises(ValueError, match="eval split"):
        dataset.eval_batches("train")
    with pytest.raises(ValueError, match="start_step"):
        dataset.train_batches(0, start_step=dataset.steps_per_epoch + 1)
    with pytest.raises(ValueError, match="labels"):
        data.from_arrays(data.DataConfig("x", batch_size=1), ("a",), _tagged_arrays(10))


# ---- the shared TFDS data ----

def _require_shared(name):
    if not (SHARED_TFDS / name).is_dir():
        pytest.skip(f"{name} not found in {SHARED_TFDS}; set TFDS_DATA_DIR to a TFDS data dir holding it")


@pytest.fixture(scope="module")
def mnist():
    _require_shared("mnist")
    return data.load(data.DataConfig("mnist", data_dir=str(SHARED_TFDS), batch_size=64,
                                     eval_batch_size=1000, validation_fraction=0.1))


def test_mnist_loads_with_its_real_splits(mnist):
    info = mnist.info
    assert (info.num_classes, info.image_shape, info.class_names[:2]) == (10, (28, 28, 1), ("0", "1"))
    assert (info.num_train, info.num_validation, info.num_test) == (54_000, 6_000, 10_000)
    batch = next(mnist.train_batches(0))
    assert batch["image"].shape == (64, 28, 28, 1) and batch["image"].dtype == np.float32
    assert batch["image"].max() == 1.0 and batch["image"].min() == 0.0
    assert set(np.unique(batch["label"])) <= set(range(10)) and len(np.unique(batch["label"])) > 5
    masks = [b["mask"] for b in mnist.eval_batches("test")]
    assert sum(m.sum() for m in masks) == 10_000 and all(len(m) == 1000 for m in masks)


def test_cifar10_loads_as_rgb_32x32():
    _require_shared("cifar10")
    dataset = data.load(data.DataConfig("cifar10", data_dir=str(SHARED_TFDS), num_train_examples=1000))
    assert dataset.info.image_shape == (32, 32, 3) and dataset.info.class_names[0] == "airplane"
    assert (dataset.info.num_train, dataset.info.num_test) == (1000, 10_000)


def test_tf_flowers_is_resized_and_gets_a_held_out_test_split():
    _require_shared("tf_flowers")
    with pytest.raises(ValueError, match="image_size"):
        data.load(data.DataConfig("tf_flowers", data_dir=str(SHARED_TFDS)))
    dataset = data.load(data.DataConfig("tf_flowers", data_dir=str(SHARED_TFDS), image_size=(24, 20), batch_size=16))
    assert dataset.info.image_shape == (24, 20, 3) and dataset.info.num_classes == 5
    assert dataset.info.num_test == round(data.TEST_FRACTION * 3670)
    assert dataset.info.num_train + dataset.info.num_test == 3670
    batch = next(dataset.train_batches(0))
    assert batch["image"].shape == (16, 24, 20, 3) and batch["image"].std() > 0.05


def test_unknown_dataset_name_is_a_clear_value_error(tmp_path):
    with pytest.raises(ValueError, match=r"not_a_dataset_xyz.*tfds.list_builders\(\).*mnist"):
        data.load(data.DataConfig("not_a_dataset_xyz", data_dir=str(tmp_path)))


def test_missing_dataset_offline_raises_one_clear_error_quickly(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    start = time.monotonic()
    with pytest.raises(data.DatasetUnavailableError) as error:
        data.load(data.DataConfig("mnist", data_dir=str(tmp_path)))
    assert time.monotonic() - start < 30
    message = str(error.value)
    assert "'mnist'" in message and str(tmp_path) in message
    assert "TFDS_DATA_DIR" in message and "--data_dir" in message and "tfds build mnist" in message


def test_download_precheck_connects_once_to_each_http_host(monkeypatch):
    from cnn_jax.data import tfds_source
    calls = []

    class FakeConnection:
        def close(self):
            pass

    def connect(address, timeout):
        calls.append(address)
        if address[0] == "offline.example":
            raise OSError("unreachable")
        return FakeConnection()

    monkeypatch.setattr(socket, "create_connection", connect)
    tfds_source._check_reachable(["https://a.example/x.gz", "https://a.example/y.gz", "http://b.example:8080/z",
                                  "gs://bucket/file"])
    assert sorted(calls) == [("a.example", 443), ("b.example", 8080)]
    with pytest.raises(OSError, match="unreachable"):
        tfds_source._check_reachable(["https://offline.example/data.tar"])


# ---- augmentation ----

def _images(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).random(shape, dtype=np.float32))


_jitted_crop = jax.jit(data.random_crop, static_argnums=2)
_jitted_flip = jax.jit(data.random_flip)
_jitted_cutout = jax.jit(data.cutout, static_argnums=2)


@examples(8)
@given(shape=st.sampled_from([(1, 5, 7, 1), (3, 8, 8, 3), (2, 12, 6, 3)]),  # few shapes: few compiles
       padding=st.sampled_from([0, 1, 3]), size=st.sampled_from([1, 3, 6]), seed=st.integers(0, 2**16))
def test_augmentations_keep_shape_dtype_and_range(shape, padding, size, seed):
    images = _images(seed, shape)
    key = jax.random.key(seed)
    for augmented in (_jitted_crop(key, images, padding), _jitted_flip(key, images), _jitted_cutout(key, images, size)):
        assert augmented.shape == images.shape and augmented.dtype == images.dtype
        values = np.asarray(augmented)
        assert 0.0 <= values.min() and values.max() <= 1.0


def test_crop_without_padding_is_identity_and_with_padding_a_shifted_window():
    images = _images(0, (16, 8, 8, 3))
    key = jax.random.key(1)
    np.testing.assert_array_equal(data.random_crop(key, images, 0), images)
    out = np.asarray(data.random_crop(key, images, 2))
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
    shifts = []
    for i in range(len(images)):
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if np.array_equal(out[i], padded[i, dy:dy + 8, dx:dx + 8])]
        assert matches, f"example {i} is not a window of its padded image"
        shifts.append(matches[0])
    assert len(set(shifts)) > 1  # each example gets its own offset


def test_flip_is_an_involution_with_the_same_key_and_varies_per_example():
    images = _images(0, (32, 5, 7, 3))
    key = jax.random.key(3)
    once = data.random_flip(key, images)
    np.testing.assert_array_equal(data.random_flip(key, once), images)
    flipped = np.array([np.array_equal(once[i], images[i, :, ::-1]) for i in range(32)])
    kept = np.array([np.array_equal(once[i], images[i]) for i in range(32)])
    assert np.all(flipped | kept) and flipped.any() and kept.any()


def test_cutout_zeroes_one_square_of_at_most_size_squared_pixels():
    size = 4
    images = jnp.ones((64, 16, 16, 3))
    out = np.asarray(data.cutout(jax.random.key(0), images, size))
    zero = np.all(out == 0, axis=-1)
    assert np.all((out == 0) == zero[..., None])  # all channels of a pixel go together
    counts = zero.sum(axis=(1, 2))
    assert np.all(counts <= size * size) and np.all(counts > 0)
    inside = 0
    for mask in zero:
        rows, cols = np.nonzero(mask)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert mask.sum() == height * width  # a solid rectangle
        if rows.min() > 0 and cols.min() > 0 and rows.max() < 15 and cols.max() < 15:
            assert (height, width) == (size, size)
            inside += 1
    assert inside > 10


def test_make_augment_composes_jits_and_rejects_bad_names():
    assert data.make_augment([]) is None
    with pytest.raises(ValueError, match=r"unknown augmentation.*'rotate'.*crop"):
        data.make_augment(["crop", "rotate"])
    with pytest.raises(ValueError, match="string"):
        data.make_augment("crop,flip")
    with pytest.raises(ValueError, match="repeat"):
        data.make_augment(["flip", "flip"])
    augment = jax.jit(data.make_augment(["crop", "flip", "cutout"], crop_padding=2, cutout_size=3))
    images = _images(0, (8, 10, 10, 3))
    a, b = augment(jax.random.key(0), images), augment(jax.random.key(0), images)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, augment(jax.random.key(1), images))
    assert not np.array_equal(a, images)


# ---- prefetch ----

def test_prefetch_to_device_preserves_order_and_values():
    batches = [{"image": np.full((4, 2, 2, 1), i, np.float32), "label": np.arange(4, dtype=np.int32) + i}
               for i in range(5)]
    mesh = jax.make_mesh((1,), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    for kwargs in ({}, {"size": 1, "sharding": sharding}):
        out = list(data.prefetch_to_device(iter(batches), **kwargs))
        assert len(out) == 5
        for got, want in zip(out, batches):
            assert isinstance(got["image"], jax.Array)
            np.testing.assert_array_equal(got["image"], want["image"])
            np.testing.assert_array_equal(got["label"], want["label"])
        if kwargs:
            assert out[0]["image"].sharding == sharding
    with pytest.raises(ValueError, match="size"):
        data.prefetch_to_device(iter(batches), size=0)
