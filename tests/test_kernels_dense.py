"""The dense-product kernels (kernels/dense.py) against the plain matmul and linear
(lipref/primitives/linear.py inside reference_only()): transposing the product changes
only the rounding of the sums. Called directly, so this also runs under LIPREF_REFERENCE=1."""
import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lipref import primitives as P
from lipref.kernels import applying_kernel, dense, reference_only


def _plain(fn, *args):
    with reference_only():
        return fn(*args)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 40), k=st.integers(1, 9), n=st.integers(1, 40),
       scale=st.sampled_from([1e-150, 1.0, 1e150]), zeros=st.sampled_from([0.0, 0.5, 1.0]),
       bias=st.booleans())
def test_products_equal_the_plain_definitions(seed, m, k, n, scale, zeros, bias):
    rng = numpy.random.default_rng(seed)
    a = numpy.where(rng.random((m, k)) < zeros, 0.0, rng.standard_normal((m, k)) * scale)
    w = rng.standard_normal((n, k))
    b = rng.standard_normal(n) if bias else None
    tol = dict(rtol=1e-13, atol=1e-13 * scale * k)
    numpy.testing.assert_allclose(dense.matmul(a, w.T), _plain(P.matmul, a, w.T), **tol)
    numpy.testing.assert_allclose(dense.linear(a, w, b), _plain(P.linear, a, w, b), **tol)
    g = rng.standard_normal((m, n)) * scale
    plain_grad = numpy.matmul(g, w)  # the plain input gradient of linear (primitives/linear.py)
    numpy.testing.assert_allclose(dense.linear_input_grad(g, w), plain_grad, rtol=1e-13, atol=1e-13 * scale * n)


def test_dense_kernels_apply_on_numpy_only(xp):
    a = xp.asarray(numpy.ones((2, 3)))
    applies = applying_kernel("matmul", a, a.T) is not None
    assert applies == ("numpy" in xp.__name__)


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_overflow_is_inf_in_both():
    a = numpy.full((2, 3), 1e200)
    numpy.testing.assert_array_equal(dense.linear(a, a, None), _plain(P.linear, a, a, None))
    assert numpy.all(numpy.isposinf(dense.linear(a, a, None)))


def test_add_in_place_keeps_the_dtype_and_writes_only_into_the_new_array():
    new, b = numpy.zeros((2, 3), dtype=numpy.float32), numpy.ones(3, dtype=numpy.float64)
    out = dense.add_in_place(new, b)
    assert out.dtype == numpy.float64 and numpy.all(new == 0)  # another dtype: a new array
    same = numpy.zeros((2, 3))
    assert dense.add_in_place(same, b) is same and numpy.all(same == 1)
