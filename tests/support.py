"""Test helpers, from the public lipref.testing: build data on the host, compare on the host,
insist on the backend's type."""
from lipref.backend import is_host_numpy
from lipref.testing import assert_backend_close, assert_close, to_numpy  # noqa: F401


def examples(xp, on_numpy, elsewhere):
    """Hypothesis examples for a property test on backend `xp`: `on_numpy` on NumPy, where the
    kernels run too, `elsewhere` on array-api-strict and CuPy, which run the same plain code
    (array-api-strict checks that it keeps to the standard; slowly, so with fewer draws)."""
    return on_numpy if is_host_numpy(xp) else elsewhere
