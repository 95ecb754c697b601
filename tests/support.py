"""Test helpers: build data on the host, compare on the host, insist on the backend's type."""
import numpy
from array_api_compat import array_namespace


def assert_backend_close(actual, expected, xp, rtol=1e-7, atol=1e-9, what="result"):
    """Fail unless `actual` is an array of backend `xp` and equals `expected` within tolerance."""
    assert not isinstance(actual, numpy.ndarray) or "numpy" in xp.__name__, \
        f"{what}: got a NumPy array from backend {xp.__name__}"
    got_ns = array_namespace(actual)
    assert got_ns.__name__.split(".")[-1] == xp.__name__.split(".")[-1] or got_ns is xp, \
        f"{what}: array of namespace {got_ns.__name__}, expected {xp.__name__}"
    numpy.testing.assert_allclose(to_numpy(actual), to_numpy(expected), rtol=rtol, atol=atol, err_msg=what)


def to_numpy(a):
    from lipref.backend import to_host
    if isinstance(a, (float, int)):
        return numpy.asarray(a)
    return numpy.asarray(to_host(a))
