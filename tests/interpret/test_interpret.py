"""Attribution and feature visualization (cnn_jax.interpret): the methods' defining properties, parity with the
reference implementation PAIR-code ``saliency`` (its framework-agnostic ``saliency.core``), and the gallery.

Models are small zoo models with variables drawn by numpy (compiling Flax's initializers is slow on CPU): lenet5
(tanh, so smooth) for the gradient methods, simple_cnn and resnet20 (ReLUs) for the layer methods.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import Zoo, fast_key, pair_masks, pair_model_function, random_variables, relative_error, uniform_images

from cnn_jax import interpret, ops
from cnn_jax.interpret.activation_maximization import objective_values
from cnn_jax.interpret.gallery import write_gallery
from cnn_jax.interpret.guided_backprop import with_guided_relus
from cnn_jax.interpret.occlusion import occlusion_masks
from cnn_jax.interpret.smoothgrad import smoothgrad_with_noise
from cnn_jax.models import get_model
from cnn_jax.models.mlp import MLPHead


@pytest.fixture(scope="module")
def lenet():
    return Zoo("lenet5", (16, 16, 1))


@pytest.fixture(scope="module")
def small_cnn():
    return Zoo("simple_cnn", (12, 12, 1))


@pytest.fixture(scope="module")
def resnet():
    return Zoo("resnet20", (32, 32, 3))


# --- gradient methods ------------------------------------------------------------------------------------------

def test_saliency_of_a_linear_model_is_its_weight_vector():
    rng = np.random.default_rng(0)
    weights, bias = jnp.asarray(rng.normal(size=(5 * 4 * 2, 3)), jnp.float32), jnp.asarray([0.5, -1.0, 2.0])
    images = uniform_images((3, 5, 4, 2))
    targets = jnp.array([2, 0, 1])

    def f(x):
        return x.reshape(len(x), -1) @ weights + bias

    expected = weights.T[targets].reshape(images.shape)
    np.testing.assert_allclose(interpret.saliency(f, images, targets), expected, rtol=1e-6)
    np.testing.assert_allclose(interpret.gradient_x_input(f, images, targets), images * expected, rtol=1e-6)


def test_integrated_gradients_are_complete(lenet):
    """Attributions sum to f(x) - f(baseline) at the targets (Sundararajan et al.'s completeness axiom); PAIR's
    Riemann sum (both ends weighted fully) converges as 1 / steps."""
    maps = interpret.integrated_gradients(lenet.f, lenet.images, lenet.targets, steps=512)
    rows = jnp.arange(len(lenet.targets))
    difference = (lenet.f(lenet.images)[rows, lenet.targets]
                  - lenet.f(jnp.zeros_like(lenet.images))[rows, lenet.targets])
    assert float(jnp.abs(difference).min()) > 0.1  # a real difference to account for
    np.testing.assert_allclose(maps.sum(axis=(1, 2, 3)), difference, rtol=0.01)


def test_integrated_gradients_batches_of_the_path_agree_and_jit(lenet):
    method = functools.partial(interpret.integrated_gradients, lenet.f, steps=6)
    everything = method(lenet.images, lenet.targets)
    assert everything.shape == lenet.images.shape
    np.testing.assert_allclose(method(lenet.images, lenet.targets, batch_size=4), everything, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax.jit(method)(lenet.images, lenet.targets), everything, rtol=1e-5, atol=1e-7)


def test_smoothgrad_without_noise_is_the_method_itself(lenet):
    method = functools.partial(interpret.integrated_gradients, steps=4)
    smooth = interpret.smoothgrad(method, lenet.f, lenet.images, lenet.targets, fast_key(), num_samples=2,
                                  noise_level=0.0)
    np.testing.assert_allclose(smooth, method(lenet.f, lenet.images, lenet.targets), rtol=1e-5, atol=1e-7)
    noisy = interpret.smoothgrad(interpret.saliency, lenet.f, lenet.images, lenet.targets, fast_key(),
                                 num_samples=3, magnitude=True)
    assert noisy.shape == lenet.images.shape and float(noisy.min()) >= 0


def test_occlusion_of_a_linear_model_is_the_mean_window_contribution():
    """Hiding a window of a linear model drops its logit by the window's share of w . x."""
    rng = np.random.default_rng(1)
    weights = jnp.asarray(rng.normal(size=(6, 6, 2)), jnp.float32)
    images = uniform_images((2, 6, 6, 2))

    def f(x):
        return jnp.stack([(x * weights).sum(axis=(1, 2, 3)), jnp.zeros(len(x))], axis=1)

    maps = interpret.occlusion(f, images, jnp.array([0, 0]), patch=3, stride=2)
    masks = occlusion_masks(6, 6, 3, 2)
    drops = np.einsum("phw,nhw->np", masks, np.asarray((images * weights).sum(axis=-1)))
    expected = np.einsum("np,phw->nhw", drops, masks) / masks.sum(axis=0)
    assert masks.shape == (9, 6, 6) and masks.min(axis=0).min() == 0 and masks.sum(axis=0).min() >= 1
    np.testing.assert_allclose(maps, np.broadcast_to(expected[..., None], images.shape), rtol=1e-5, atol=1e-6)


def test_bad_inputs_name_the_problem(lenet):
    with pytest.raises(ValueError, match="rank 4"):
        interpret.saliency(lenet.f, lenet.images[0], lenet.targets)
    with pytest.raises(ValueError, match="one integer class per image"):
        interpret.saliency(lenet.f, lenet.images, jnp.array([0]))
    with pytest.raises(ValueError, match="float images"):
        interpret.saliency(lenet.f, (lenet.images * 255).astype(jnp.uint8), lenet.targets)
    with pytest.raises(ValueError, match="does not broadcast"):
        interpret.integrated_gradients(lenet.f, lenet.images, lenet.targets, baseline=jnp.zeros((3, 3)))
    with pytest.raises(ValueError, match="patch"):
        interpret.occlusion(lenet.f, lenet.images, lenet.targets, patch=17)


# --- guided backpropagation --------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation, active", [
    (jax.nn.relu, lambda h: h > 0),
    (jax.nn.relu6, lambda h: (h > 0) & (h < 6)),
])
def test_guided_backprop_follows_its_rule(activation, active):
    """Through x -> act(x W1) W2, the guided gradient is W1 (g * [act passes h] * [g > 0]) with g = W2[:, target]."""
    rng = np.random.default_rng(2)
    w1 = jnp.asarray(rng.normal(size=(2 * 2 * 3, 16)) * 3, jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
    images = uniform_images((3, 2, 2, 3))
    targets = jnp.array([0, 3, 1])

    @jax.jit  # ReLUs inside jit-ted functions are found too
    def f(x):
        return activation(x.reshape(len(x), -1) @ w1) @ w2

    h = images.reshape(3, -1) @ w1
    g = w2.T[targets]
    expected = ((g * active(h) * (g > 0)) @ w1.T).reshape(images.shape)
    plain = ((g * active(h)) @ w1.T).reshape(images.shape)
    guided = interpret.guided_backprop(f, images, targets)
    np.testing.assert_allclose(guided, expected, rtol=1e-5, atol=1e-5)
    assert relative_error(guided, plain) > 0.1  # the rule changed something
    np.testing.assert_allclose(with_guided_relus(f)(images), f(images), rtol=1e-6)  # the forward pass is unchanged


def test_guided_backprop_on_a_zoo_model_and_without_relus(small_cnn):
    guided = interpret.guided_backprop(small_cnn.f, small_cnn.images, small_cnn.targets)
    assert guided.shape == small_cnn.images.shape
    assert relative_error(guided, interpret.saliency(small_cnn.f, small_cnn.images, small_cnn.targets)) > 0.1
    with pytest.raises(ValueError, match="no jax.nn.relu"):
        interpret.guided_backprop(lambda x: x.reshape(len(x), -1)[:, :3], small_cnn.images, small_cnn.targets)


# --- Grad-CAM and layers -----------------------------------------------------------------------------------------

def test_grad_cam_is_nonnegative_and_image_shaped_on_any_named_layer(resnet):
    assert interpret.sown_layers(resnet.model, resnet.variables, resnet.images) == [
        "stage1", "stage2", "stage3", "features"]
    convs = interpret.conv_layers(resnet.model, resnet.variables, resnet.images)
    assert convs[0] == "stem/conv" and "stage2_block0/conv1/conv" in convs and len(convs) == 19
    cam = functools.partial(interpret.grad_cam, resnet.model, resnet.variables, resnet.images, resnet.targets)
    for layer, size in (("features", 8), ("stage2", 16), ("stage2_block0/conv1/conv", 16)):
        maps = cam(layer, upsample=False)
        assert maps.shape == (2, size, size) and float(maps.min()) >= 0 and float(maps.max()) > 0, layer
    full = cam("features")
    assert full.shape == (2, 32, 32) and float(full.min()) >= 0
    # A module path and the sown name of the same map give the same maps.
    np.testing.assert_allclose(cam("stage3_block2", upsample=False), cam("features", upsample=False), rtol=1e-6)


def test_grad_cam_names_the_layers_it_knows(resnet):
    with pytest.raises(ValueError, match=r"no layer 'stage9'.*'features'.*'stem/conv'"):
        interpret.grad_cam(resnet.model, resnet.variables, resnet.images, resnet.targets, "stage9")
    with pytest.raises(ValueError, match="spatial"):
        interpret.grad_cam(resnet.model, resnet.variables, resnet.images, resnet.targets, "head/logits")


# --- activation maximization -------------------------------------------------------------------------------------

@pytest.mark.parametrize("objective, channels, decorrelate", [  # channels alive (positive) on a gray image
    (interpret.channel("stage1", [0, 7]), 1, True),
    (interpret.neuron("stage1", 3), 1, False),
    (interpret.class_logit([0, 2]), 3, True),
])
def test_activation_maximization_raises_its_objective(objective, channels, decorrelate):
    model = get_model("simple_cnn", 3)
    variables = random_variables(model, uniform_images((1, 12, 12, channels)))
    shape = (12, 12, channels)
    result = interpret.activation_maximization(model, variables, objective, shape, fast_key(), steps=48,
                                               learning_rate=0.1, decorrelate=decorrelate, tv=0.01)
    count = len(objective.indices)
    assert result.images.shape == (count, *shape) and result.history.shape == (48, count)
    assert float(result.images.min()) >= 0 and float(result.images.max()) <= 1
    start = objective_values(model, variables, objective, jnp.full((count, *shape), 0.5))  # where it starts
    final = objective_values(model, variables, objective, result.images)
    assert bool(jnp.all(final > start + 0.1)), (start, final)


# --- parity with PAIR-code saliency --------------------------------------------------------------------------------
# At full float32 precision (the float32_precision fixture): GPUs would otherwise run convs in TF32.

@pytest.fixture(scope="module")
def pair():
    return pytest.importorskip("saliency.core", reason="parity tests need PAIR-code saliency==0.2.1")


def finite_difference_gradients(zoo, x, target, step=1e-2):
    """d f(x)[:, target] / dx by fourth-order central differences of the model computed in float64 with portable
    kernels: a gradient that shares no code with jax.grad, the kernels' derivatives or the method under test. (The
    zoo's heads return float32 logits, whose rounding a step of 1e-2 keeps near 1e-5 of the gradient.)"""
    x = np.asarray(x, np.float64)
    size = x[0].size
    offsets = np.eye(size).reshape(size, *x.shape[1:]) * step
    with jax.enable_x64(True), ops.kernels("portable"):
        model = zoo.model.clone(dtype=jnp.float64)
        variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), zoo.variables)
        logit = jax.jit(lambda images: model.apply(variables, images)[:, target].astype(jnp.float64))
        gradients = [sum(w * np.asarray(logit(image + k * offsets), np.float64) for k, w in ((-2, 1), (-1, -8),
                                                                                              (1, 8), (2, -1)))
                     / (12 * step) for image in x]
    return np.stack(gradients).reshape(x.shape)


def test_gradient_matches_pair_saliency_on_finite_differences(pair, lenet, float32_precision):
    """PAIR's GradientSaliency returns the gradient its model function hands it; handed central differences of the
    model, it must agree with ours, so a wrong target, sign, scale or pixel layout would show."""
    def call(x_batch, call_model_args=None, expected_keys=None):
        return {pair.INPUT_OUTPUT_GRADIENTS: finite_difference_gradients(lenet, x_batch, call_model_args["target"])}

    reference = pair_masks(lenet, pair.GradientSaliency().GetMask, call)
    assert float(np.abs(reference).max()) > 0
    assert relative_error(interpret.saliency(lenet.f, lenet.images, lenet.targets), reference) < 1e-3


def test_integrated_gradients_match_pair_saliency(pair, lenet, float32_precision):
    """Fed the model's gradients, PAIR's path (baseline, steps, Riemann sum) and ours give the same maps."""
    call = pair_model_function(pair, lenet)
    baseline = np.asarray(uniform_images(lenet.images.shape[1:], seed=5)) * 0.3
    reference = np.stack([pair.IntegratedGradients().GetMask(np.asarray(x, np.float64), call, {"target": int(t)},
                                                             x_baseline=baseline.astype(np.float64), x_steps=16,
                                                             batch_size=8)
                          for x, t in zip(lenet.images, lenet.targets, strict=True)])
    ours = interpret.integrated_gradients(lenet.f, lenet.images, lenet.targets, baseline=baseline, steps=16)
    assert relative_error(ours, reference) < 1e-4


@pytest.mark.parametrize("magnitude", [False, True])
def test_smoothgrad_matches_pair_saliency_on_the_same_noise(pair, lenet, magnitude, float32_precision):
    """PAIR draws np.random.normal(0, stdev, image.shape) per sample, image by image: replay those draws."""
    samples, level, seed = 3, 0.2, 7
    np.random.seed(seed)
    reference = pair_masks(lenet, pair.GradientSaliency().GetSmoothedMask, pair_model_function(pair, lenet),
                           stdev_spread=level, nsamples=samples, magnitude=magnitude)
    np.random.seed(seed)
    noise = np.random.normal(0, 1, (len(lenet.images), samples, *lenet.images.shape[1:])).swapaxes(0, 1)
    ours = smoothgrad_with_noise(interpret.saliency, lenet.f, lenet.images, lenet.targets,
                                 jnp.asarray(noise, jnp.float32), noise_level=level, magnitude=magnitude)
    assert relative_error(ours, reference) < 1e-4


def test_occlusion_matches_pair_saliency_up_to_its_sum(pair, small_cnn, float32_precision):
    """PAIR sums the drops of every stride-1 window over a pixel; ours averages them."""
    reference = pair_masks(small_cnn, pair.Occlusion().GetMask, pair_model_function(pair, small_cnn), size=4, value=0.3)
    ours = interpret.occlusion(small_cnn.f, small_cnn.images, small_cnn.targets, patch=4, stride=1, value=0.3)
    coverage = occlusion_masks(12, 12, 4, 1).sum(axis=0)[None, :, :, None]
    assert relative_error(ours * coverage, reference) < 1e-4


def test_grad_cam_at_the_layers_resolution_matches_pair_saliency(pair, resnet, float32_precision):
    """The reference's layer gradient comes from the classifier head applied to the sown "features" alone."""
    head = MLPHead(3, pool="average")

    def features_and_gradient(x, target):
        _, state = resnet.model.apply(resnet.variables, x, mutable=["intermediates"])
        features = state["intermediates"]["features"][0]

        def logit(a):
            return head.apply({"params": resnet.variables["params"]["head"]}, a)[:, target].sum()

        return features, jax.grad(logit)(features)

    reference = pair_masks(resnet, pair.GradCam().GetMask, pair_model_function(pair, resnet, features_and_gradient),
                           should_resize=False, three_dims=False)
    ours = interpret.grad_cam(resnet.model, resnet.variables, resnet.images, resnet.targets, upsample=False)
    assert float(np.abs(reference).max()) > 0
    assert relative_error(ours, reference) < 1e-4


# --- the gallery ----------------------------------------------------------------------------------------------------

def test_gallery_writes_every_figure_and_an_index(small_cnn, tmp_path):
    names = ["zero", "one", "two <b>"]
    index = write_gallery(small_cnn.model, small_cnn.variables, small_cnn.images, [0, 2], names, tmp_path / "gallery",
                          rng=fast_key(), smoothgrad_samples=2, ig_steps=4, visualization_steps=4)
    page = index.read_text()
    for figure in ("attributions.png", "filters.png", "feature_maps.png", "class_visualizations.png"):
        assert (index.parent / figure).stat().st_size > 1000, figure
        assert f'src="{figure}"' in page
    assert "two &lt;b&gt;" in page and "<b>" not in page  # class names are escaped
