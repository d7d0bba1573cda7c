"""Sanity checks (cnn_jax.interpret.sanity): the similarity metrics against scipy and scikit-image, the layer
randomization, the errors, and the page with its figures, on a small random model (the paper's finding on a
trained one is in test_interpret_trained.py)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import Zoo, fast_key
from scipy import stats

from cnn_jax import interpret
from cnn_jax.interpret import sanity
from cnn_jax.interpret.gallery import write_sanity_page
from cnn_jax.interpret.methods import METHODS, attribution
from cnn_jax.models import get_model


@pytest.fixture(scope="module")
def small_cnn():
    return Zoo("simple_cnn", (12, 12, 1), batch=3)


def test_spearman_matches_scipy_with_ties_and_is_nan_for_a_constant_map():
    rng = np.random.default_rng(0)
    a = np.round(rng.normal(size=(4, 9, 7)), 1)  # rounding makes ties
    b = np.round(a + rng.normal(size=a.shape), 1)
    expected = [stats.spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b)]
    np.testing.assert_allclose(sanity.spearman(jnp.asarray(a), jnp.asarray(b)), expected, rtol=1e-5)
    assert np.isnan(float(sanity.spearman(jnp.zeros((1, 9, 7)), jnp.asarray(b[:1]))[0]))


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics", reason="the SSIM reference is scikit-image's")
    rng = np.random.default_rng(1)
    a = rng.uniform(size=(3, 20, 16))
    b = np.clip(a + 0.3 * rng.normal(size=a.shape), 0, 1)
    expected = [metrics.structural_similarity(x, y, data_range=1.0) for x, y in zip(a, b)]
    np.testing.assert_allclose(sanity.ssim(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)), expected,
                               rtol=1e-4)
    np.testing.assert_allclose(sanity.ssim(jnp.asarray(a), jnp.asarray(a)), 1.0, rtol=1e-6)


def test_randomization_replaces_exactly_the_named_layers(small_cnn):
    fresh = small_cnn.model.init(jax.random.key(3), small_cnn.images[:1])
    assert sanity.parameter_layers(small_cnn.model, small_cnn.images) == ["conv1", "conv2", "head"]
    mixed = sanity.randomized(small_cnn.variables, fresh, ["head/logits", "conv1"])
    for layer, source in (("conv1", fresh), ("conv2", small_cnn.variables), ("head", fresh)):
        jax.tree_util.tree_map(np.testing.assert_array_equal, mixed["params"][layer], source["params"][layer])
    assert not np.array_equal(fresh["params"]["conv2"]["kernel"], small_cnn.variables["params"]["conv2"]["kernel"])


def test_bad_requests_name_the_problem_and_the_choices(small_cnn):
    args = (small_cnn.model, small_cnn.variables, small_cnn.images, small_cnn.targets, fast_key())
    with pytest.raises(ValueError,
                       match=r"'conv9' names no layer; the model's layers are \['conv1', 'conv2', 'head'\]"):
        sanity.sanity_checks(*args, methods=["gradient"], order=["head", "conv9"])
    with pytest.raises(ValueError, match=r"unknown attribution method 'lime'.*gradient, gradient_x_input"):
        sanity.sanity_checks(*args, methods=["gradient", "lime"])
    with pytest.raises(ValueError, match=r"unknown attribution method 'lime'"):
        attribution("lime", small_cnn.model)
    with pytest.raises(ValueError, match=r"target class 3 is out of range: the model has 3 classes \(0 to 2\)"):
        sanity.sanity_checks(*args[:3], jnp.array([0, 3, 1]), args[4], methods=["gradient"])
    with pytest.raises(ValueError, match="target class -1 is out of range"):
        interpret.saliency(small_cnn.f, small_cnn.images, jnp.array([0, -1, 1]))
    # Traced (inside jit), an out-of-range target cannot raise: its map has NaNs, never another class's values.
    maps = jax.jit(interpret.saliency, static_argnums=0)(small_cnn.f, small_cnn.images, jnp.array([0, 7, 1]))
    assert bool(jnp.isnan(maps[1]).any()) and not bool(jnp.isnan(maps[0]).any())


def test_every_method_explains_through_the_registry(small_cnn):
    for name in METHODS:
        maps = attribution(name, small_cnn.model)(small_cnn.variables, small_cnn.images, small_cnn.targets, fast_key())
        assert maps.shape[:3] == small_cnn.images.shape[:3] and bool(jnp.isfinite(maps).all()), name


def test_sanity_checks_and_their_page(small_cnn, tmp_path):
    shuffled = small_cnn.model.init(jax.random.key(9), small_cnn.images[:1])
    result = sanity.sanity_checks(small_cnn.model, small_cnn.variables, small_cnn.images, small_cnn.targets,
                                  fast_key(), methods=["gradient", "guided_backprop"], shuffled_variables=shuffled)
    assert result.order == ("head", "conv2", "conv1")
    for table in (result.cascading, result.independent):
        for row in table.values():
            assert set(row) == set(sanity.METRICS) and row["ssim"].shape == (4, 3)
            np.testing.assert_allclose(row["ssim"][0], 1.0, rtol=1e-5)  # the trained model against itself
            assert float(row["ssim"][1:].max()) < 0.99  # random weights change the maps
    assert result.maps["gradient"].shape == (4, 12, 12) and result.data["gradient"]["spearman"].shape == (3,)
    page = write_sanity_page(result, small_cnn.images[0], tmp_path, title="checks <of> a model")
    text = page.read_text()
    for figure in ("sanity_maps.png", "sanity_curves.png"):
        assert (tmp_path / figure).stat().st_size > 1000 and f'src="{figure}"' in text
    assert "checks &lt;of&gt; a model" in text and "shuffled labels" in text
    summary = json.loads((tmp_path / "sanity.json").read_text())
    assert summary["cascading"]["gradient"]["ssim"][0] == pytest.approx(1.0, abs=1e-5)


def test_the_default_order_is_the_forward_order_even_when_names_do_not_sort_so():
    """airbench's layers run stem, stage1_conv0, ..., head, while their names sort head, stage1_..., stem (as the
    keys of variables read back from an export are): the top-down order starts at the head and ends at the stem."""
    model = get_model("airbench_half", 10)
    layers = sanity.parameter_layers(model, jnp.zeros((1, 32, 32, 3)))
    assert layers[0] == "stem" and layers[-1] == "head" and layers != sorted(layers)
    assert layers.index("stage1_conv0") < layers.index("stage2_conv0") < layers.index("stage3_conv1")
