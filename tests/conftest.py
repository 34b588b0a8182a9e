"""Test settings: four CPU devices and fast compiles of tiny models.

Strict dtype promotion is not set globally (optax's Adam bias correction mixes Python
floats with int32 steps); tests of our own array ops opt in with the ``strict_promotion``
fixture.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-jnet2net-tests")  # never download
os.environ.setdefault("MPLBACKEND", "Agg")

import hypothesis
import jax
import pytest

jax.config.update("jax_disable_most_optimizations", True)

# Property tests draw the same examples on every run (a red CI is reproducible, never luck);
# `pytest --hypothesis-profile=explore` draws new ones.
hypothesis.settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis.settings.register_profile("explore", derandomize=False)
hypothesis.settings.load_profile("ci")


@pytest.fixture
def strict_promotion():
    """Runs the test under ``jax_numpy_dtype_promotion='strict'``."""
    with jax.numpy_dtype_promotion("strict"):
        yield


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "notebooks: runs the notebooks in SMALL mode (deselect with -m 'not notebooks')"
    )
