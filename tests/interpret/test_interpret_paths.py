"""Path attributions beyond the straight line: Blur IG (Xu et al. 2020) and Guided IG (Kapishnikov et al. 2021).

Each matches PAIR-code ``saliency`` 0.2.1 (``saliency.core.BlurIG``, ``GuidedIG``) fed the same model gradients,
and keeps the completeness that a path method promises: the maps sum to the change of the target logit between
the path's two ends. The model is lenet5 (tanh, so smooth) with numpy-drawn variables, as in test_interpret.py.
"""
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import Zoo, pair_masks, pair_model_function, relative_error
from scipy import ndimage

from cnn_jax import interpret


@pytest.fixture(scope="module")
def lenet():
    return Zoo("lenet5", (16, 16, 1))


@pytest.fixture(scope="module")
def pair():
    return pytest.importorskip("saliency.core", reason="parity tests need PAIR-code saliency==0.2.1")


@pytest.fixture
def numpy2_quantile(monkeypatch):
    """PAIR's Guided IG calls ``np.quantile(..., interpolation=)``, which numpy 2 renamed ``method=``."""
    quantile = np.quantile

    def renamed(a, q, *args, interpolation=None, **kwargs):
        return quantile(a, q, *args, **({"method": interpolation} if interpolation else {}), **kwargs)

    monkeypatch.setattr(np, "quantile", renamed)


def target_logits(zoo, images):
    return np.asarray(zoo.f(jnp.asarray(images, jnp.float32)))[np.arange(len(zoo.targets)), zoo.targets]


# --- Blur IG -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sqrt", [False, True])
def test_blur_ig_matches_pair_saliency(pair, lenet, sqrt, float32_precision):
    """PAIR's default batch_size=1: with larger batches it weights a whole batch of steps by the width of its last
    one, which differs from the others' under ``sqrt``."""
    settings = dict(max_sigma=6.0, steps=12, grad_step=0.05, sqrt=sqrt)
    reference = pair_masks(lenet, pair.BlurIG().GetMask, pair_model_function(pair, lenet), **settings)
    ours = interpret.blur_ig(lenet.f, lenet.images, lenet.targets, **settings)
    assert float(np.abs(reference).max()) > 0
    assert relative_error(ours, reference) < 1e-4


def test_blur_ig_is_complete(lenet):
    """The maps sum to f(image) - f(image blurred by max_sigma), closer with more steps."""
    sigma = 8.0
    maps = interpret.blur_ig(lenet.f, lenet.images, lenet.targets, max_sigma=sigma, steps=256, grad_step=0.01)
    blurred = np.stack([ndimage.gaussian_filter(np.asarray(x), [sigma, sigma, 0], mode="constant")
                        for x in lenet.images])
    difference = target_logits(lenet, lenet.images) - target_logits(lenet, blurred)
    assert float(np.abs(difference).min()) > 0.1  # a real difference to account for
    np.testing.assert_allclose(maps.sum(axis=(1, 2, 3)), difference, rtol=0.03)


# --- Guided IG -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_dist", [0.1, 1.0])
def test_guided_ig_matches_pair_saliency(pair, lenet, max_dist, float32_precision, numpy2_quantile):
    settings = dict(x_steps=16, fraction=0.25, max_dist=max_dist)
    reference = pair_masks(lenet, pair.GuidedIG().GetMask, pair_model_function(pair, lenet), **settings)
    ours = interpret.guided_ig(lenet.f, lenet.images, lenet.targets, steps=16, fraction=0.25, max_dist=max_dist)
    assert float(np.abs(reference).max()) > 0
    assert relative_error(ours, reference) < 1e-3


def test_guided_ig_is_complete_and_leaves_the_straight_line(lenet):
    maps = interpret.guided_ig(lenet.f, lenet.images, lenet.targets, steps=128)
    difference = target_logits(lenet, lenet.images) - target_logits(lenet, np.zeros(lenet.images.shape))
    assert float(np.abs(difference).min()) > 0.1
    np.testing.assert_allclose(maps.sum(axis=(1, 2, 3)), difference, rtol=0.03)
    unbounded, straight = (interpret.guided_ig(lenet.f, lenet.images, lenet.targets, steps=32, max_dist=d)
                           for d in (1.0, 0.0))
    assert relative_error(unbounded, straight) > 0.1  # the guided path is another path


def test_guided_ig_without_deviation_is_left_riemann_integrated_gradients(lenet):
    """``max_dist=0`` pins every feature to the straight line: sum over k < steps of grad(b + k/steps (x - b))
    times (x - b) / steps."""
    steps = 8
    ours = interpret.guided_ig(lenet.f, lenet.images, lenet.targets, steps=steps, max_dist=0.0)
    left_points = [interpret.saliency(lenet.f, lenet.images * k / steps, lenet.targets) for k in range(steps)]
    expected = sum(left_points) * lenet.images / steps
    assert relative_error(ours, expected) < 1e-4


def test_path_methods_name_bad_settings(lenet):
    with pytest.raises(ValueError, match="max_sigma > 0"):
        interpret.blur_ig(lenet.f, lenet.images, lenet.targets, max_sigma=0)
    with pytest.raises(ValueError, match="0 < fraction <= 1"):
        interpret.guided_ig(lenet.f, lenet.images, lenet.targets, fraction=0)
    with pytest.raises(ValueError, match="does not broadcast"):
        interpret.guided_ig(lenet.f, lenet.images, lenet.targets, baseline=jnp.zeros((3, 3)))
