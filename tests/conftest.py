"""Shared test settings and fixtures.

Hypothesis: every new shape is a new XLA compilation, so examples have no per-example deadline and are few; they
are derandomized so that CI runs the same examples every time (profile "ci", the default).
``HYPOTHESIS_PROFILE=thorough`` draws fresh examples, 10x as many, when hunting for bugs: every property honours
it, those that set their own count through ``helpers.examples(n)``.
"""
import os

import jax
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, max_examples=15, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "thorough", deadline=None, max_examples=150, derandomize=False, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])


def pytest_configure(config):
    """Loads the hypothesis profile before any test module is collected (their settings read it)."""
    profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    if profile not in ("ci", "thorough"):
        raise pytest.UsageError(f"HYPOTHESIS_PROFILE={profile!r} is not a profile: use 'ci' (the default) or "
                                "'thorough'")
    settings.load_profile(profile)


@pytest.fixture
def float32_precision():
    """Compute float32 matmuls and convs at full float32 precision, so that tests can compare them tightly
    (on GPUs the default precision uses TF32 or bfloat16 passes)."""
    with jax.default_matmul_precision("float32"):
        yield


@pytest.fixture(autouse=True, scope="session")
def session_caches(tmp_path_factory):
    """Caches are this test session's own (its subprocesses inherit the variable), so tests neither read nor fill
    the user's; except the compiled oneDNN library, which the user's runs use as they are: keyed by its source and
    versions, loaded only from a directory of the user's own with its SHA-256, so the user's is linked in rather than
    compiled again by every session. Where the user's is refused, the session builds its own."""
    from cnn_jax import caches

    root = tmp_path_factory.mktemp("cnn_jax_cache")
    try:
        (root / "onednn").symlink_to(caches.private_dir(caches.cache_dir("onednn")), target_is_directory=True)
    except OSError:  # caches.UnsafeCacheDirError included: the library is built in this session's cache
        pass
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(caches.CACHE_ENV, str(root))
        yield
