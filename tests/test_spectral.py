"""Spectral norms: estimates and bounds checked against scipy's exact singular values.

Operators are built on the host (NumPy), moved to the backend under test with xp.asarray,
and compared with the exact norm of the explicitly materialised (masked) matrix:
- power iteration: never above the exact norm, equal to the exact power iteration computed
  from the SVD, converged to the exact norm when the spectral gap allows it;
- (zero operators also for the Lanczos, dense and conv bounds; the rest of those in
  test_lanczos.py and test_certificates.py)
- zero operators and zero start vectors give zeros, never NaN; warm starts stay converged.
"""
import math

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from operators_support import (
    SETTINGS,
    conv_matrix,
    conv_operator,
    dense_operator,
    exact_power_sigma,
    gap,
    masked_norms,
    masks,
)
from support import assert_backend_close, to_numpy

from lipref.bounds import certificates as C
from lipref.bounds import lanczos as L
from lipref.bounds import rounding as R
from lipref.bounds import spectral as S

# xp is a function-scoped fixture but stateless (a namespace module): safe under @given

@settings(SETTINGS, max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 12), n=st.integers(1, 12), batch=st.integers(1, 4),
       density=st.sampled_from([0.4, 0.8, 1.0]))
def test_power_iteration_dense_masked(xp, seed, m, n, batch, density):
    rng = numpy.random.default_rng(seed)
    weight = rng.standard_normal((m, n))
    m_in, m_out = masks(rng, (batch, n), density), masks(rng, (batch, m), density)
    v0 = rng.standard_normal((batch, n))
    exact = masked_norms(weight, m_in, m_out)
    apply, apply_adjoint = dense_operator(xp, weight, m_in, m_out)
    n_iters = 300
    sigma, u, v = S.power_iteration(apply, apply_adjoint, xp.asarray(v0), n_iters)

    sig = to_numpy(sigma)
    assert numpy.all(sig <= exact * (1 + 1e-12) + 1e-300), "power iteration above the exact norm"
    assert_backend_close(sigma, exact_power_sigma(weight, m_in, m_out, v0, n_iters), xp, rtol=1e-9, atol=1e-12,
                         what="sigma vs exact-arithmetic power iteration")
    for i in range(batch):
        if gap(weight, m_in, m_out, i) < 0.97:
            numpy.testing.assert_allclose(sig[i], exact[i], rtol=1e-8, atol=1e-12, err_msg="not converged")
    # v unit, A v = sigma u
    assert_backend_close(xp.sum(v * v, axis=1), numpy.ones(batch), xp, rtol=1e-12, what="||v||")
    assert_backend_close(apply(v), to_numpy(sigma)[:, None] * to_numpy(u), xp, rtol=1e-10, atol=1e-12,
                         what="A v = sigma u")


@settings(SETTINGS, max_examples=12)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 3), stride=st.integers(1, 2), padding=st.integers(0, 1),
       c=st.integers(1, 3), o=st.integers(1, 3), h=st.integers(3, 6), density=st.sampled_from([0.5, 1.0]))
def test_power_iteration_conv_masked(xp, seed, k, stride, padding, c, o, h, density):
    rng = numpy.random.default_rng(seed)
    weight = rng.standard_normal((o, c, k, k))
    matrix, out_shape = conv_matrix(weight, (c, h, h), stride, padding)
    batch = 3
    m_in, m_out = masks(rng, (batch, c, h, h), density), masks(rng, (batch,) + tuple(out_shape), density)
    v0 = rng.standard_normal((batch, c, h, h))
    exact = masked_norms(matrix, m_in, m_out)
    apply, apply_adjoint = conv_operator(xp, weight, m_in, m_out, stride, padding)
    n_iters = 200
    sigma, u, v = S.power_iteration(apply, apply_adjoint, xp.asarray(v0), n_iters)

    sig = to_numpy(sigma)
    assert numpy.all(sig <= exact * (1 + 1e-12) + 1e-300)
    assert_backend_close(sigma, exact_power_sigma(matrix, m_in, m_out, v0, n_iters), xp, rtol=1e-9, atol=1e-12,
                         what="sigma vs exact-arithmetic power iteration")
    for i in range(batch):
        if gap(matrix, m_in, m_out, i) < 0.95:
            numpy.testing.assert_allclose(sig[i], exact[i], rtol=1e-8, atol=1e-12, err_msg="not converged")
    assert tuple(u.shape) == (batch,) + tuple(out_shape) and tuple(v.shape) == (batch, c, h, h)


def test_power_iteration_warm_start_stays_converged(xp):
    rng = numpy.random.default_rng(7)
    weight = rng.standard_normal((9, 7))
    m_in, m_out = masks(rng, (3, 7), 0.8), masks(rng, (3, 9), 0.8)
    apply, apply_adjoint = dense_operator(xp, weight, m_in, m_out)
    sigma, _, v = S.power_iteration(apply, apply_adjoint, xp.asarray(rng.standard_normal((3, 7))), 2000)
    for n_iters in (0, 1, 5):
        again, _, v2 = S.power_iteration(apply, apply_adjoint, v, n_iters)
        assert_backend_close(again, to_numpy(sigma), xp, rtol=1e-12, what=f"warm start, {n_iters} more steps")
        assert_backend_close(xp.abs(xp.sum(v * v2, axis=1)), numpy.ones(3), xp, rtol=1e-10, what="v stays put")


def test_zero_operator_and_zero_start_give_no_nan(xp):
    rng = numpy.random.default_rng(3)
    weight = rng.standard_normal((5, 4))
    m_in = numpy.ones((3, 4))
    m_out = numpy.ones((3, 5))
    m_out[0] = 0.0  # sample 0: the zero operator
    apply, apply_adjoint = dense_operator(xp, weight, m_in, m_out)
    v0 = rng.standard_normal((3, 4))
    v0[1] = 0.0  # sample 1: a zero start vector (replaced by a deterministic one)
    exact = masked_norms(weight, m_in, m_out)

    sigma, u, v = S.power_iteration(apply, apply_adjoint, xp.asarray(v0), 200)
    for name, arr in (("sigma", sigma), ("u", u), ("v", v)):
        assert numpy.all(numpy.isfinite(to_numpy(arr))), f"{name} has NaN/inf"
    assert_backend_close(sigma, exact, xp, rtol=1e-8, what="sigma (zero op -> 0; zero start still converges)")
    assert to_numpy(sigma)[0] == 0.0 and numpy.all(to_numpy(u)[0] == 0.0)

    upper, estimate, v = L.lanczos_upper_bound(apply, apply_adjoint, xp.asarray(v0), 4, 1e-6)
    up = to_numpy(upper)
    # zero operator: the bound is Lanczos' absolute allowance for underflow, sqrt(2 (n + m)^2 eta)
    assert 0.0 <= up[0] <= 1e-150 and to_numpy(estimate)[0] == 0.0, "zero operator: bound about 0"
    assert up[1] == math.inf, "zero start vector: no guarantee, +inf"
    assert numpy.isfinite(up[2]) and up[2] >= exact[2]
    assert numpy.all(numpy.isfinite(to_numpy(v)))

    zero = xp.zeros((2, 3, 4), dtype=xp.float64)
    assert_backend_close(R.dense_spectral_norm_upper(zero), numpy.zeros(2), xp, atol=0, what="dense zero")
    assert_backend_close(C.conv_spectral_norm_upper(xp.zeros((2, 3, 3, 3), dtype=xp.float64), (5, 5), 1, 1),
                         numpy.asarray(0.0), xp, atol=1e-300, what="conv zero")


@pytest.mark.parametrize("dtype_name, log2_norm", [("float64", 40), ("float64", -40), ("float32", 20),
                                                   ("float32", -20), ("float32", 5), ("float64", 0)])
def test_power_iteration_rescales_iterates_that_leave_the_safe_range(xp, dtype_name, log2_norm):
    """Iterates are divided by their norms only when those leave [2^-32, 2^32]: operators
    whose A^T A scales by 2^80 (2^-80) per step would overflow (underflow) float64 within
    13 steps, float32 ones at 2^40 within 4, so 30 steps pass only if rescaling happens;
    the estimate still equals exact-arithmetic power iteration, and v is unit."""
    rng = numpy.random.default_rng(5)
    weight = rng.standard_normal((7, 6)) * 2.0 ** log2_norm
    m_in, m_out = masks(rng, (3, 6), 0.8), masks(rng, (3, 7), 0.8)
    m_in[:, 0] = m_out[:, 0] = 1.0  # no zero operator
    dtype = getattr(xp, dtype_name)
    w, mi, mo = (xp.asarray(a, dtype=dtype) for a in (weight, m_in, m_out))

    def apply(v):
        return mo * xp.matmul(mi * v, w.T)

    def apply_adjoint(u):
        return mi * xp.matmul(mo * u, w)
    v0 = rng.standard_normal((3, 6))
    sigma, u, v = S.power_iteration(apply, apply_adjoint, xp.asarray(v0, dtype=dtype), 30)
    rtol = 1e-10 if dtype_name == "float64" else 1e-4
    assert_backend_close(sigma, exact_power_sigma(weight, m_in, m_out, v0, 30), xp, rtol=rtol, atol=0,
                         what=f"sigma at ||W|| ~ 2^{log2_norm}")
    assert_backend_close(xp.sqrt(xp.sum(v * v, axis=1)), numpy.ones(3), xp, rtol=rtol, what="v is unit")
    assert_backend_close(xp.sqrt(xp.sum(u * u, axis=1)), numpy.ones(3), xp, rtol=rtol, what="u is unit")


def test_safe_start(xp):
    """A start keeps its values where its norm is in range (only its direction matters), is
    scaled to unit where it is not, and becomes the constant unit vector where it is zero."""
    rng = numpy.random.default_rng(2)
    v0 = rng.standard_normal((4, 3, 5))
    v0[1] = 0.0
    v0[2] *= 1e12  # norm beyond 2^32: the whole batch is scaled to unit
    start = S.safe_start(xp.asarray(v0))
    norms = numpy.linalg.norm(v0.reshape(4, -1), axis=1)
    expected = v0 / numpy.where(norms > 0, norms, 1.0).reshape(4, 1, 1)
    expected[1] = 1.0 / math.sqrt(15)
    assert_backend_close(start, expected, xp, rtol=1e-14, atol=0, what="out of range: unit")
    in_range = numpy.delete(v0, (1, 2), axis=0)
    assert numpy.array_equal(to_numpy(S.safe_start(xp.asarray(in_range))), in_range), "in range: unchanged"
