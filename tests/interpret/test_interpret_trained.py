"""Interpretation on a trained network: what holds only once a model has learned something (cnn_jax.interpret).

One small simple_cnn is trained here on real MNIST (a few thousand images from $TFDS_DATA_DIR, a few hundred Adam
steps, seconds on a CPU), with a twin trained the same way on shuffled labels; the module skips when MNIST is not
on disk. Feature visualization must leave its gray start and beat the best natural image, the sanity checks of
Adebayo et al. (2018) must reproduce the paper's qualitative finding, and the faithfulness scores of Petsiuk et al.
(2018) must rank gradient methods above chance.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import SHARED_DATA

from cnn_jax import interpret
from cnn_jax.interpret import faithfulness, sanity
from cnn_jax.interpret.activation_maximization import REDIRECT_STEPS, objective_values
from cnn_jax.interpret.methods import Settings
from cnn_jax.models import get_model

DATA_DIR = SHARED_DATA
NUM_TRAIN, NUM_TEST, STEPS, BATCH = 4096, 256, 300, 64


def mnist_arrays():
    """(train images, train labels, test images, test labels): float32 NHWC in [0, 1] and int32."""
    if not os.path.isdir(os.path.join(DATA_DIR, "mnist")):
        pytest.skip(f"these tests train on real MNIST; none under {DATA_DIR} (set $TFDS_DATA_DIR)")
    import tensorflow_datasets as tfds

    def split(name):
        batch = tfds.as_numpy(tfds.load("mnist", split=name, batch_size=-1, data_dir=DATA_DIR, download=False))
        return batch["image"].astype(np.float32) / 255, batch["label"].astype(np.int32)

    return (*split(f"train[:{NUM_TRAIN}]"), *split(f"test[:{NUM_TEST}]"))


def train(model, images, labels, seed=0):
    """Variables of ``model`` after ``STEPS`` Adam steps of softmax cross-entropy on random batches."""
    variables = jax.jit(model.init)(jax.random.key(seed), images[:1])
    optimizer = optax.adam(2e-3)

    @jax.jit
    def step(params, state, x, y):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply({**variables, "params": p}, x), y).mean()
        updates, state = optimizer.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    params, state = variables["params"], optimizer.init(variables["params"])
    order = np.random.default_rng(seed).integers(0, len(images), (STEPS, BATCH))
    for rows in order:
        params, state = step(params, state, images[rows], labels[rows])
    return {**variables, "params": params}


class Trained:
    """simple_cnn trained on MNIST (``variables``) and on MNIST with shuffled labels (``shuffled``)."""

    def __init__(self):
        train_images, train_labels, self.images, self.labels = mnist_arrays()
        self.model = get_model("simple_cnn", 10)
        self.variables = train(self.model, train_images, train_labels)
        shuffled = np.random.default_rng(1).permutation(train_labels)
        self.shuffled = train(self.model, train_images, shuffled)

    def f(self, variables):
        return lambda x: self.model.apply(variables, x)


@pytest.fixture(scope="module")
def mnist():
    return Trained()


def test_the_trained_model_has_learned(mnist):
    """The premise of the other tests: real labels are learned, shuffled ones are not (on unseen images)."""
    def accuracy(variables):
        return float((jnp.argmax(mnist.f(variables)(mnist.images), -1) == mnist.labels).mean())
    assert accuracy(mnist.variables) > 0.9 and accuracy(mnist.shuffled) < 0.3


# --- feature visualization ---------------------------------------------------------------------------------------

def dead_on_gray(model, variables):
    """``variables`` with the first convolution's bias lowered, channel by channel, just enough that none of its
    units is on for a gray image: the state of the README's MNIST model (every stage-1 ReLU off on gray, so the
    plain gradient there is exactly 0), made certain on this briefly trained one."""
    conv1 = interpret.tap(model, variables, "conv1")(jnp.full((1, 28, 28, 1), 0.5))[1][0, 0, 0]  # constant map
    params = dict(variables["params"])
    params["conv1"] = {**params["conv1"], "bias": params["conv1"]["bias"] - jnp.maximum(conv1, 0) - 0.05}
    return {**variables, "params": params}


def test_class_visualizations_leave_a_dead_gray_start(mnist):
    """Plain gradients never move images whose first-stage ReLUs are all off; the redirected ReLUs of the first
    steps do, and every class logit ends well above where it started."""
    variables = dead_on_gray(mnist.model, mnist.variables)
    objective = interpret.class_logit(range(10))
    gray = jnp.full((10, 28, 28, 1), 0.5)
    assert float(interpret.tap(mnist.model, variables, "stage1")(gray)[1].max()) == 0
    start = objective_values(mnist.model, variables, objective, gray)

    def visualize(redirect_steps):
        result = jax.jit(lambda v, key: interpret.activation_maximization(
            mnist.model, v, objective, (28, 28, 1), key, steps=64, redirect_steps=redirect_steps))(
                variables, jax.random.key(0))
        return objective_values(mnist.model, variables, objective, result.images)

    np.testing.assert_allclose(visualize(0), start, atol=1e-4)  # plain gradients: nothing moves
    final = visualize(REDIRECT_STEPS)
    spread = float(start.max() - start.min()) + 1.0
    assert bool(jnp.all(final > start + 2 * spread)), (start, final)



# --- sanity checks (Adebayo et al. 2018) ---------------------------------------------------------------------------

def test_gradients_decorrelate_under_cascading_randomization_and_guided_backprop_does_not(mnist):
    """The paper's finding (its Figure 2): once the layers are random, plain gradients rank the pixels unlike the
    trained model's, while guided backpropagation's maps stay far more similar. Over three seeds (fresh weights and
    images), guided backprop's similarity at the fully random model exceeds the gradient's in every seed, by more
    than three standard deviations of the gap across seeds; likewise for the model trained on shuffled labels."""
    gaps = {metric: [] for metric in ("spearman", "ssim")}
    for seed in range(3):
        images = jnp.asarray(mnist.images[16 * seed:16 * (seed + 1)])
        targets = jnp.argmax(mnist.f(mnist.variables)(images), axis=-1)
        result = sanity.sanity_checks(mnist.model, mnist.variables, images, targets, jax.random.key(seed),
                                      methods=["gradient", "guided_backprop"], independent=False,
                                      shuffled_variables=mnist.shuffled if seed == 0 else None)
        for metric, gap in gaps.items():
            gap.append(float(np.nanmean(result.cascading["guided_backprop"][metric][-1])
                             - np.nanmean(result.cascading["gradient"][metric][-1])))
        if seed == 0:
            for metric in gaps:
                assert np.nanmean(result.data["guided_backprop"][metric]) > np.nanmean(result.data["gradient"][metric])
    for metric, gap in gaps.items():
        gap = np.asarray(gap)
        assert gap.min() > 0 and gap.mean() > 3 * gap.std(ddof=1), (metric, gap)


# --- faithfulness (Petsiuk et al. 2018) ----------------------------------------------------------------------------

def test_gradient_methods_delete_and_insert_the_evidence_faster_than_chance(mnist):
    """On the trained model, ranking pixels by gradient x input or integrated gradients makes the predicted class's
    probability fall faster under deletion (lower AUC) and rise faster under insertion (higher AUC) than a random
    ranking does. Over three seeds (three chunks of 16 images, each with its own random ranking and order of ties),
    each gap is positive in every seed and more than three standard deviations of the gap across seeds."""
    images, seeds = jnp.asarray(mnist.images[:48]), 3
    targets = jnp.argmax(mnist.f(mnist.variables)(images), axis=-1)
    result = faithfulness.faithfulness(mnist.model, mnist.variables, images, targets, jax.random.key(0),
                                       methods=["gradient_x_input", "integrated_gradients"], baselines=["random"],
                                       steps=16, settings=Settings(path_steps=16), chunk=len(images) // seeds)

    def areas(name, kind):  # the mean AUC of each chunk
        return np.asarray(faithfulness.area(getattr(result, kind)[name])).reshape(seeds, -1).mean(axis=1)

    for name in ("gradient_x_input", "integrated_gradients"):
        for kind, gap in (("deletion", areas("random", "deletion") - areas(name, "deletion")),
                          ("insertion", areas(name, "insertion") - areas("random", "insertion"))):
            assert gap.min() > 0 and gap.mean() > 3 * gap.std(ddof=1), (name, kind, gap)


# --- feature visualization beside dataset examples -------------------------------------------------------------

def test_optimized_images_excite_a_channel_more_than_any_test_image(mnist):
    """Distill's comparison: for channels of the last convolutional map, the optimized image raises the channel's
    mean activation above that of the best of 256 natural test images (found by top_examples)."""
    channels = [0, 5, 10, 15]
    objective = interpret.channel("features", channels)
    best, = interpret.top_examples(mnist.model, mnist.variables, [objective],
                                   [{"image": mnist.images[i:i + 64]} for i in range(0, NUM_TEST, 64)], k=1)
    result = jax.jit(lambda v, key: interpret.activation_maximization(mnist.model, v, objective, (28, 28, 1), key,
                                                                      steps=128))(mnist.variables, jax.random.key(0))
    optimized = objective_values(mnist.model, mnist.variables, objective, result.images)
    assert np.all(np.asarray(optimized) > best.values[:, 0]), (optimized, best.values[:, 0])
