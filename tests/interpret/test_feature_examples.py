"""Feature visualization beside dataset examples (cnn_jax.interpret.dataset_examples, the diversity term of
activation_maximization, gallery.write_feature_page) on small zoo models with numpy-drawn variables.

On a trained model the optimized image must beat the best natural image: test_interpret_trained.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import Zoo

from cnn_jax import interpret
from cnn_jax.interpret.activation_maximization import gram_similarity, objective_values, unit_values
from cnn_jax.interpret.gallery import FEATURES, INDEX, write_feature_page


@pytest.fixture(scope="module")
def small_cnn():
    return Zoo("simple_cnn", (12, 12, 1))


def batches_of(images, size):
    """``images`` as eval batches of one shape: the last padded with zero images, marked by a zero mask."""
    for start in range(0, len(images), size):
        part = images[start:start + size]
        pad = size - len(part)
        yield {"image": np.pad(part, ((0, pad), (0, 0), (0, 0), (0, 0))),
               "mask": np.pad(np.ones(len(part), np.float32), (0, pad))}


def test_streamed_top_examples_are_the_top_of_one_sort(small_cnn):
    """Batches of 4 over 10 images (the last padded) give each unit the k best images, best first, as ranking all
    10 at once does, for a channel and a class objective in the same pass."""
    images = np.random.default_rng(3).uniform(size=(10, 12, 12, 1)).astype(np.float32)
    objectives = [interpret.channel("stage2", [0, 3, 5]), interpret.class_logit([2, 0])]
    found = interpret.top_examples(small_cnn.model, small_cnn.variables, objectives, batches_of(images, 4), k=3)
    for objective, examples in zip(objectives, found, strict=True):
        values = np.asarray(unit_values(small_cnn.model, small_cnn.variables, objective, images))
        values = values[:, list(objective.indices)].T  # (units, 10)
        order = np.argsort(-values, axis=1)[:, :3]
        np.testing.assert_array_equal(examples.positions, order)
        np.testing.assert_allclose(examples.values, np.take_along_axis(values, order, axis=1), rtol=1e-5)
        np.testing.assert_array_equal(examples.images, images[order])


def test_top_examples_name_bad_requests(small_cnn):
    batches = list(batches_of(np.zeros((2, 12, 12, 1), np.float32), 2))
    with pytest.raises(ValueError, match=r"index 99 is out of range: there are \d+ channels in layer 'stage2'"):
        interpret.top_examples(small_cnn.model, small_cnn.variables, [interpret.channel("stage2", 99)], batches)
    with pytest.raises(ValueError, match="has no layer 'stage9'. Sown names: "):
        interpret.top_examples(small_cnn.model, small_cnn.variables, [interpret.channel("stage9", 0)], batches)
    with pytest.raises(ValueError, match="the source was empty"):
        interpret.top_examples(small_cnn.model, small_cnn.variables, [interpret.class_logit(0)], [])


def test_gram_similarity_is_cosine_between_copies_of_one_index():
    activation = jnp.asarray(np.random.default_rng(4).normal(size=(3, 2, 2, 4)), jnp.float32)
    grams = np.stack([a.reshape(-1, 4).T @ a.reshape(-1, 4) for a in np.asarray(activation)]).reshape(3, -1)
    cosine = grams[0] @ grams[1] / np.linalg.norm(grams[0]) / np.linalg.norm(grams[1])
    np.testing.assert_allclose(gram_similarity(activation, (7, 7, 2)), [cosine, cosine, 0.0], rtol=1e-5)
    dead = activation.at[1].set(0.0)  # a layer switched off is not a new facet
    np.testing.assert_allclose(gram_similarity(dead, (7, 7, 2)), [1.0, 1.0, 0.0], rtol=1e-6)


def test_the_diversity_term_pushes_copies_of_a_channel_apart(small_cnn):
    """Three images of one channel, from the same start: with the diversity term their styles (Gram matrices at the
    layer) are less alike than without it (measured: cosine 0.94 without, 0.80 with a weight of 10), and the
    channel is still raised well above its start."""
    objective = interpret.channel("stage2", [1, 1, 1])
    layer_of = interpret.tap(small_cnn.model, small_cnn.variables, "stage2")
    optimize = jax.jit(lambda v, key, weight: interpret.activation_maximization(
        small_cnn.model, v, objective, (12, 12, 1), key, steps=32, diversity=weight), static_argnums=2)
    plain, diverse = (optimize(small_cnn.variables, jax.random.key(0), weight).images for weight in (0.0, 10.0))
    similarity = [float(gram_similarity(layer_of(x)[1], objective.indices).mean()) for x in (plain, diverse)]
    assert similarity[1] < similarity[0] - 0.05, similarity
    start = objective_values(small_cnn.model, small_cnn.variables, objective, jnp.full((3, 12, 12, 1), 0.5))
    final = objective_values(small_cnn.model, small_cnn.variables, objective, diverse)
    assert np.all(np.asarray(final) > np.asarray(start) + 1.0), (start, final)


def test_diversity_needs_a_layer_for_classes(small_cnn):
    with pytest.raises(ValueError, match="needs diversity_layer"):
        interpret.activation_maximization(small_cnn.model, small_cnn.variables, interpret.class_logit([0, 0]),
                                          (12, 12, 1), jax.random.key(0), steps=1, diversity=1.0)


def test_the_feature_page_shows_each_unit_beside_its_examples(small_cnn, tmp_path):
    images = np.random.default_rng(5).uniform(size=(6, 12, 12, 1)).astype(np.float32)
    page = write_feature_page(small_cnn.model, small_cnn.variables, batches_of(images, 4), tmp_path,
                              image_shape=(12, 12, 1), layer="stage2", channels=[0, 1], classes=[1],
                              class_names=["a", "b <i>", "c"], rng=jax.random.key(0), copies=2, examples=2, steps=3,
                              source="of <random> images")
    text = page.read_text()
    assert page.name == FEATURES and not (tmp_path / INDEX).exists()
    for figure in ("feature_channels.png", "feature_classes.png"):
        assert f'src="{figure}"' in text and (tmp_path / figure).stat().st_size > 1000
    assert "of &lt;random&gt; images" in text and "<random>" not in text
