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

import helpers  # tests/ is on sys.path
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


#: The integration tier: modules that train, run the CLI, the notebooks, the README, the
#: experiments' entry points or several processes. Every test in them is ``slow``; so is a
#: test marked ``@pytest.mark.slow`` elsewhere (one that takes more than a few seconds).
#: ``pytest -m "not slow"`` runs the fast tier.
INTEGRATION_MODULES = frozenset(
    {
        "test_cli",
        "test_cli_faults",
        "test_demo",
        "test_distributed",
        "test_experiments",
        "test_fit_growth",
        "test_notebooks",
        "test_packaging",
        "test_readme",
        "test_scale_down",
        "test_signals",
        "test_train_growth",
    }
)


def pytest_configure(config):
    jax.monitoring.register_event_duration_secs_listener(helpers.count_trace)
    config.addinivalue_line(
        "markers", "notebooks: runs the notebooks in SMALL mode (deselect with -m 'not notebooks')"
    )
    config.addinivalue_line(
        "markers", "slow: the integration tier, or a test of several seconds (-m 'not slow')"
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.stem in INTEGRATION_MODULES:
            item.add_marker(pytest.mark.slow)
