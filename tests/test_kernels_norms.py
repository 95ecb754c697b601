"""The host kernel of the per-sample norms (kernels/norms.py) against the plain definition
(bounds/spectral.scaled_norms): one unscaled sum of squares in pieces where that is
accurate, the plain definition where not."""
import math

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import assert_backend_close

from lipref.bounds import spectral as S
from lipref.kernels import applying_kernel, enabled, reference_only
from lipref.kernels import norms as K


def test_the_kernel_applies_on_numpy_only(xp):
    picked = applying_kernel("norms", xp.zeros((2, 3), dtype=xp.float64))
    on_numpy = "numpy" in xp.__name__ and "strict" not in xp.__name__
    assert (picked is K.norms) == (enabled() and on_numpy)  # enabled: not LIPREF_REFERENCE=1
    with reference_only():
        assert applying_kernel("norms", xp.zeros((2, 3), dtype=xp.float64)) is None


@pytest.mark.parametrize("batch, dim", [(1, 7), (3, 4096), (32, 28800), (32, 900), (32, 97), (600, 130), (0, 5)])
def test_norms_in_pieces_and_their_range(batch, dim):
    """Per-sample norms, summed over pieces where that lets NumPy drop the interpreter lock,
    equal numpy.linalg.norm, and the range reported is theirs."""
    pieces = K._pieces_per_sample(batch, dim)
    assert dim % pieces == 0 and (pieces == 1 or (dim // pieces >= 64 and batch * pieces >= 512))
    rng = numpy.random.default_rng(batch + dim)
    x = rng.standard_normal((batch, dim))
    norms, smallest, largest = K.unscaled_norms_and_range(x)
    expected = numpy.linalg.norm(x, axis=1)
    numpy.testing.assert_allclose(norms, expected, rtol=1e-13)
    if batch:
        assert smallest == pytest.approx(expected.min(), rel=1e-13)
        assert largest == pytest.approx(expected.max(), rel=1e-13)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_exactly_zero_samples_stay_on_the_fast_path_tiny_ones_do_not():
    """A sample that is exactly zero (a masked operator with nothing left) has norm 0 on
    the one-pass path; squares that may have underflowed (or overflowed) give it up."""
    rng = numpy.random.default_rng(4)
    x = rng.standard_normal((3, 40))
    x[1] = 0.0
    norms, smallest, _ = K.unscaled_norms_and_range(x)
    numpy.testing.assert_allclose(norms, numpy.linalg.norm(x, axis=1), rtol=1e-14, atol=0)
    assert smallest == 0.0
    x[2] = 1e-200  # squares underflow to a zero sum, but the sample is not zero
    assert K.unscaled_norms_and_range(x) is None and K.norms(x) is NotImplemented
    x[2] = 1e200  # squares overflow
    assert K.unscaled_norms_and_range(x) is None and K.norms(x) is NotImplemented
    expected = numpy.linalg.norm(x, axis=1)
    expected[2] = 1e200 * math.sqrt(40)  # numpy.linalg.norm itself overflows here
    numpy.testing.assert_allclose(S.norms(x), expected, rtol=1e-14, atol=0)
    x[2] = 1e-200
    found = S.norms(x)
    assert found[1] == 0.0 and found[2] == pytest.approx(1e-200 * math.sqrt(40), rel=1e-14)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 40), dim=st.integers(1, 700),
       scale=st.sampled_from([0.0, 1e-200, 1e-160, 1e-20, 1.0, 1e20, 1e150, 1e300]),
       zeros=st.integers(0, 3))
def test_kernel_equals_the_plain_definition(xp, seed, batch, dim, scale, zeros):
    """spectral.norms with the kernel and under reference_only() agree to rounding (and to
    numpy.linalg.norm of the scaled samples), exact zeros exactly, at scales where the
    squares underflow or overflow."""
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal((batch, dim)) * scale
    x[:min(zeros, batch)] = 0.0
    expected = numpy.linalg.norm(x / max(scale, 1e-300), axis=1) * max(scale, 1e-300) if scale else numpy.zeros(batch)
    fast = S.norms(xp.asarray(x))
    with reference_only():
        plain = S.norms(xp.asarray(x))
    assert_backend_close(fast, expected, xp, rtol=1e-13, atol=0, what="kernel")
    assert_backend_close(plain, expected, xp, rtol=1e-13, atol=0, what="plain")
    assert numpy.all(numpy.asarray(plain)[:min(zeros, batch)] == 0.0)


def test_power_iteration_on_the_host_and_on_the_device_path_agree(xp):
    """The host power iteration (range tests as floats, kernel on) and the device one (all
    decisions as arrays: what CuPy and reference_only() run) give the same sigma and v, with
    zero operators, zero starts and iterates far outside the rescaling range."""
    rng = numpy.random.default_rng(3)
    weight = rng.standard_normal((5, 4)) * 2.0 ** 40
    m_out = numpy.ones((4, 5))
    m_out[0] = 0.0
    w = xp.asarray(weight)
    mo = xp.asarray(m_out)

    def apply(v):
        return xp.matmul(v, w.T) * mo

    def apply_adjoint(u):
        return xp.matmul(u * mo, w)
    v0 = rng.standard_normal((4, 4)) * 1e-30
    v0[1] = 0.0
    for n_iters in (0, 1, 6, 30):
        fast = S.power_iteration(apply, apply_adjoint, xp.asarray(v0), n_iters)
        with reference_only():
            plain = S.power_iteration(apply, apply_adjoint, xp.asarray(v0), n_iters)
        for name, a, b in zip(("sigma", "u", "v"), fast, plain):
            assert_backend_close(a, numpy.asarray(b), xp, rtol=1e-12, atol=0, what=f"{name}, {n_iters} steps")


def test_the_host_power_iteration_keeps_the_plain_rescaling_range():
    """kernels/power_iteration.py repeats the plain definition's rescaling range (a kernel
    never imports lipref.bounds): the two must agree."""
    from lipref.kernels import power_iteration as H
    assert (H.RESCALE_ABOVE, H.RESCALE_BELOW) == (S._RESCALE_ABOVE, S._RESCALE_BELOW)
