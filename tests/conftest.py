"""Shared fixtures: `xp` runs a test on every backend (NumPy, array-api-strict, CuPy).

CuPy runs where it imports and finds a working device; otherwise its cases skip with
the reason (never pass silently). LIPREF_TEST_BACKENDS (comma-separated) narrows the set.
"""
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lipref.backend import cupy_unavailable_reason  # noqa: E402

settings.register_profile("ci", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=10, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("LIPREF_HYPOTHESIS_PROFILE", "ci"))

ALL_BACKENDS = ("numpy", "array_api_strict", "cupy")


def pytest_report_header(config):
    from lipref.kernels import enabled
    return f"lipref kernels: {'on' if enabled() else 'off (LIPREF_REFERENCE: plain definitions only)'}"


def pytest_collection_modifyitems(config, items):
    """Mark every hypothesis test `property`: CI runs those a second time on the plain
    definitions alone (LIPREF_REFERENCE=1 ... pytest -m property)."""
    for item in items:
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.property)


def _selected():
    chosen = os.environ.get("LIPREF_TEST_BACKENDS")
    return tuple(chosen.split(",")) if chosen else ALL_BACKENDS


def backend_namespace(name):
    if name == "numpy":
        import array_api_compat.numpy as xp
        return xp
    if name == "array_api_strict":
        import array_api_strict as xp
        return xp
    if name == "cupy":
        reason = cupy_unavailable_reason()
        if reason is not None:
            pytest.skip(f"CuPy backend not tested: {reason}")
        import array_api_compat.cupy as xp
        return xp
    raise ValueError(name)


@pytest.fixture(params=_selected(), scope="session")
def xp(request):
    """The array namespace of the backend under test (stateless, so one per session;
    hypothesis then draws many examples through it without a health-check complaint)."""
    return backend_namespace(request.param)


@pytest.fixture
def rng():
    import numpy
    return numpy.random.default_rng(12345)
