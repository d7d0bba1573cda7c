"""Shared test settings and fixtures.

Hypothesis: every new shape is a new XLA compilation, so examples have no per-example deadline and are few; they
are derandomized so that CI runs the same examples every time (``HYPOTHESIS_PROFILE=explore`` draws fresh,
more numerous ones when hunting for bugs locally).
"""
import os

import jax
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, max_examples=15, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "explore", deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def float32_precision():
    """Compute float32 matmuls and convs at full float32 precision, so that tests can compare them tightly
    (on GPUs the default precision uses TF32 or bfloat16 passes)."""
    with jax.default_matmul_precision("float32"):
        yield


@pytest.fixture(autouse=True, scope="session")
def input_cache(tmp_path_factory):
    """Decoded datasets are cached for this test session only (its subprocesses inherit the variable), so tests
    neither read nor fill the user's ~/.cache/cnn_jax."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNN_JAX_CACHE_DIR", str(tmp_path_factory.mktemp("cnn_jax_cache")))
        yield
