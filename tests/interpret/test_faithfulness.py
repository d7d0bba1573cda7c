"""Deletion and insertion scores (cnn_jax.interpret.faithfulness, Petsiuk et al. 2018): the curves of a model whose
answer is known by hand, the Sobel baseline against scipy, and every method and baseline through one call.

On a trained model the scores must rank gradient methods above a random ranking: test_interpret_trained.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import Zoo, random_variables, uniform_images
from scipy import ndimage

from cnn_jax.interpret import faithfulness
from cnn_jax.models import get_model


@pytest.fixture(scope="module")
def small_cnn():
    return Zoo("simple_cnn", (12, 12, 1), batch=3)


class Linear:
    """Two logits, ``(w . x, 0)``: the probability of class 0 is sigmoid(w . x), and each pixel contributes
    ``w * x`` to it, so the deletion order that makes it fall fastest is the order of ``w * x``."""

    def __init__(self, shape=(3, 6, 6, 1), seed=0):
        rng = np.random.default_rng(seed)
        self.images = rng.uniform(size=shape).astype(np.float32)
        self.weights = rng.normal(0, 0.6, shape[1:]).astype(np.float32)
        self.targets = np.zeros(shape[0], np.int32)

    def f(self, x):
        logit = jnp.einsum("nhwc,hwc->n", x, self.weights)
        return jnp.stack([logit, jnp.zeros_like(logit)], axis=1)

    def probability(self, x):
        return 1 / (1 + np.exp(-np.einsum("nhwc,hwc->n", np.asarray(x, np.float64), self.weights)))


def expected_curves(model, scores, steps, sigma):
    """The curves computed the long way: sort each image's scores, move the first k/steps of its pixels."""
    count, height, width, _ = model.images.shape
    canvas = np.stack([ndimage.gaussian_filter(x, [sigma, sigma, 0], mode="constant") for x in model.images])
    order = np.argsort(-scores.reshape(count, -1), axis=1, kind="stable")
    deletion, insertion = [], []
    for k in range(steps + 1):
        first = np.zeros((count, height * width), bool)
        np.put_along_axis(first, order[:, :round(k * height * width / steps)], True, axis=1)
        first = first.reshape(count, height, width, 1)
        deletion.append(model.probability(np.where(first, 0, model.images)))
        insertion.append(model.probability(np.where(first, model.images, canvas)))
    return np.stack(deletion, 1), np.stack(insertion, 1)


def test_curves_of_a_linear_model_follow_the_ranking():
    model, steps, sigma = Linear(), 12, 1.5
    scores = np.asarray(faithfulness.pixel_scores(model.images * model.weights, signed=True))
    curves = faithfulness.curves(model.f, model.images, model.targets, scores, jax.random.key(0), steps=steps,
                                 blur_sigma=sigma)
    deletion, insertion = expected_curves(model, scores, steps, sigma)
    np.testing.assert_allclose(curves.deletion, deletion, atol=1e-5)
    np.testing.assert_allclose(curves.insertion, insertion, atol=1e-5)
    np.testing.assert_allclose(faithfulness.area(curves.deletion), np.trapezoid(deletion, dx=1 / steps, axis=1),
                               atol=1e-6)


def test_the_true_contributions_delete_fastest():
    """Removing the k largest contributions leaves the smallest sum, so at every step the exact ranking's deletion
    curve lies at or below that of any other ranking (here random ones and the edges)."""
    model = Linear(seed=1)
    exact = faithfulness.pixel_scores(model.images * model.weights, signed=True)
    best = faithfulness.curves(model.f, model.images, model.targets, exact, jax.random.key(0)).deletion
    others = [np.random.default_rng(seed).uniform(size=exact.shape) for seed in range(5)]
    others.append(np.asarray(faithfulness.edges(model.images)))
    for scores in others:
        other = faithfulness.curves(model.f, model.images, model.targets, scores, jax.random.key(0)).deletion
        assert np.all(np.asarray(best) <= np.asarray(other) + 1e-6)
        assert np.all(faithfulness.area(best) < faithfulness.area(other))


def test_edges_are_scipys_sobel_magnitude():
    images = np.random.default_rng(2).uniform(size=(2, 9, 11, 3)).astype(np.float32)
    expected = [np.hypot(ndimage.sobel(gray, axis=0, mode="nearest"), ndimage.sobel(gray, axis=1, mode="nearest"))
                for gray in images.mean(axis=-1)]  # image by image: sobel smooths along every other axis
    np.testing.assert_allclose(faithfulness.edges(images), expected, rtol=1e-5, atol=1e-5)


def test_ties_are_ranked_at_random():
    """A map with no opinion (all equal) must not delete in raster order: each key gives another order."""
    model = Linear()
    flat = jnp.zeros(model.images.shape[:3])
    first, second = (faithfulness.curves(model.f, model.images, model.targets, flat, jax.random.key(seed)).deletion
                     for seed in (0, 1))
    raster = faithfulness.curves(model.f, model.images, model.targets,
                                 -np.arange(36, dtype=np.float32).reshape(1, 6, 6).repeat(3, 0),
                                 jax.random.key(0)).deletion
    assert not np.allclose(first, second) and not np.allclose(first, raster)


def test_methods_and_baselines_in_one_call(small_cnn):
    """The curves' ends do not depend on the ranking: the image itself, the black image, the blurred image; and
    scoring in chunks (the last one padded) gives the curves of one batch. A sensitivity map (the gradient) and a
    map without channels (Grad-CAM) stand for the methods; every method runs through the same registry
    (test_interpret_sanity.py)."""
    steps, methods = 4, ("gradient", "grad_cam")
    result = faithfulness.faithfulness(small_cnn.model, small_cnn.variables, small_cnn.images, small_cnn.targets,
                                       jax.random.key(0), methods=methods, steps=steps, chunk=2)
    assert result.names == (*methods, *faithfulness.BASELINES)
    ends = {name: (d[:, 0], d[:, -1], i[:, 0], i[:, -1])
            for name, d, i in ((n, result.deletion[n], result.insertion[n]) for n in result.names)}
    for name in result.names:
        assert result.deletion[name].shape == result.insertion[name].shape == (len(small_cnn.images), steps + 1)
        for got, expected in zip(ends[name], ends["random"], strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-5)
        np.testing.assert_allclose(ends[name][0], ends[name][3], rtol=1e-5)  # start of deletion = end of insertion
    whole = faithfulness.faithfulness(small_cnn.model, small_cnn.variables, small_cnn.images, small_cnn.targets,
                                      jax.random.key(0), methods=["gradient"], baselines=["edges"], steps=steps,
                                      chunk=len(small_cnn.images))
    for name in ("gradient", "edges"):
        np.testing.assert_allclose(whole.deletion[name], result.deletion[name], rtol=1e-5)
        np.testing.assert_allclose(whole.insertion[name], result.insertion[name], rtol=1e-5)
    summary = faithfulness.summary(result)
    assert summary["images"] == len(small_cnn.images) and list(summary["methods"]) == list(result.names)
    np.testing.assert_allclose(summary["methods"]["edges"]["deletion_auc"],
                               np.trapezoid(result.deletion["edges"], dx=1 / steps, axis=1).mean(), rtol=1e-6)


def test_bad_requests_name_the_problem(small_cnn):
    model, variables, images, targets = small_cnn.model, small_cnn.variables, small_cnn.images, small_cnn.targets
    with pytest.raises(ValueError, match="unknown attribution method 'saliencey': use one or more of gradient, "):
        faithfulness.faithfulness(model, variables, images, targets, jax.random.key(0), methods=["saliencey"])
    with pytest.raises(ValueError, match="unknown faithfulness baseline 'sobel': use any of random, edges"):
        faithfulness.faithfulness(model, variables, images, targets, jax.random.key(0), baselines=["sobel"])
    with pytest.raises(ValueError, match=r"target class 7 is out of range: the model has 3 classes \(0 to 2\)"):
        faithfulness.faithfulness(model, variables, images, jnp.full(len(images), 7), jax.random.key(0))
    with pytest.raises(ValueError, match=r"one score per pixel, \(N, H, W\) = \(3, 12, 12\); got scores of shape"):
        faithfulness.curves(small_cnn.f, images, targets, jnp.zeros(images.shape), jax.random.key(0))


def test_a_method_that_does_not_apply_fails_before_any_is_scored(monkeypatch):
    """Guided backpropagation needs ReLUs: on a GELU model it fails while every method is traced, before the
    gradient, listed first, spends its minutes on the images."""
    model = get_model("simple_cnn", 3, activation="gelu")
    images = uniform_images((2, 12, 12, 1))
    variables = random_variables(model, images)
    scored, chunks = [], faithfulness._chunks
    monkeypatch.setattr(faithfulness, "_chunks", lambda *args: scored.append(args) or chunks(*args))
    with pytest.raises(ValueError, match="guided backpropagation found no jax.nn.relu"):
        faithfulness.faithfulness(model, variables, images, jnp.arange(2), jax.random.key(0),
                                  methods=("gradient", "guided_backprop"), baselines=())
    assert scored == []
    faithfulness.faithfulness(model, variables, images, jnp.arange(2), jax.random.key(0), methods=("gradient",),
                              baselines=(), steps=2)
    assert len(scored) == 1  # the counter sees a method that is scored
