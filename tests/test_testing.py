"""lipref.testing, the checker users run on their own primitives: it passes a right vjp,
and fails a wrong one, a wrong forward, a wrong shape and a backend mix-up, naming what."""
import autograd.numpy as anp
import numpy
import pytest

from lipref.primitives import primitive
from lipref.testing import assert_close, check_grads


def _cube(x):
    return x * x * x


def test_a_right_vjp_passes_against_autograd_and_finite_differences():
    cube = primitive(_cube, lambda g, ans, x: 3.0 * g * x * x)
    grads = check_grads(cube, (numpy.linspace(-1.0, 1.0, 7),), autograd_fn=lambda x: x ** 3)
    numpy.testing.assert_allclose(grads[0].shape, (7,))


def test_a_wrong_vjp_fails_against_autograd():
    wrong = primitive(_cube, lambda g, ans, x: 2.9 * g * x * x)
    with pytest.raises(AssertionError, match="disagrees with autograd"):
        check_grads(wrong, (numpy.linspace(-1.0, 1.0, 7),), autograd_fn=lambda x: x ** 3)


def test_a_wrong_vjp_fails_against_finite_differences_without_autograd():
    wrong = primitive(_cube, lambda g, ans, x: 2.9 * g * x * x)
    with pytest.raises(AssertionError, match="finite difference"):
        check_grads(wrong, (numpy.linspace(-1.0, 1.0, 7),))


def test_a_forward_that_disagrees_with_the_autograd_one_fails():
    cube = primitive(_cube, lambda g, ans, x: 3.0 * g * x * x)
    with pytest.raises(AssertionError, match="forward disagrees"):
        check_grads(cube, (numpy.linspace(-1.0, 1.0, 7),), autograd_fn=lambda x: x ** 3 + 1e-6)


def test_a_gradient_of_the_wrong_shape_fails():
    summed = primitive(lambda x: anp.sum(x), lambda g, ans, x: g)  # forgets to broadcast back
    with pytest.raises(AssertionError, match="shape"):
        check_grads(summed, (numpy.ones(3),))


def test_list_arguments_are_checked_element_by_element():
    joined = primitive(lambda arrays: numpy.concatenate(arrays),
                       lambda g, ans, arrays: [g[:2], g[2:] * 0.5])  # the second half is wrong
    with pytest.raises(AssertionError, match=r"argument 0\[1\]"):
        check_grads(joined, ([numpy.ones(2), numpy.ones(3)],), autograd_fn=lambda a: anp.concatenate(a))


def test_assert_close_checks_namespace_dtype_and_shape_before_values():
    import array_api_strict as xps
    a = numpy.ones(3)
    assert_close(a, a.copy(), rtol=0, atol=0)
    with pytest.raises(AssertionError, match="namespace"):
        assert_close(xps.asarray(a), a, rtol=0, atol=0)
    with pytest.raises(AssertionError, match="dtype"):
        assert_close(a.astype(numpy.float32), a, rtol=1, atol=1)
    with pytest.raises(AssertionError, match="shape"):
        assert_close(a[None, :], a, rtol=1, atol=1)
    with pytest.raises(AssertionError):
        assert_close(a + 1e-3, a, rtol=1e-6, atol=0)
