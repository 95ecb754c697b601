"""The Lanczos upper bound (bounds/lanczos.py): never below the exact norm, within a few
percent of it; vacuous, zero and breakdown cases."""
import math

import numpy
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st
from operators_support import SETTINGS, conv_matrix, conv_operator, dense_operator, masked_norms, masks
from support import assert_backend_close, to_numpy

from lipref.bounds import lanczos as L

UNDERFLOW = 1e-150  # above the bound's absolute allowance for underflow, sqrt(2 (n + m)^2 eta), here



def test_kw_relative_error_solves_the_theorem():
    for n, k, p in ((100, 30, 1e-6), (5000, 60, 1e-9), (10, 3, 0.5)):
        eps = L.kw_relative_error(n, k, p)
        assert math.isclose(1.648 * math.sqrt(n) * math.exp(-math.sqrt(eps) * (2 * k - 1)), p, rel_tol=1e-12)
    assert L.kw_relative_error(50, 50, 1e-9) == 0.0  # k >= n: the Krylov space is invariant
    with pytest.raises(ValueError):
        L.kw_relative_error(50, 10, 0.0)


@settings(SETTINGS, max_examples=10)
@given(seed=st.integers(0, 2**32 - 1), density=st.sampled_from([0.3, 0.7, 1.0]), n_iters=st.sampled_from([30, 60]))
def test_lanczos_upper_bound_dense(xp, seed, density, n_iters):
    rng = numpy.random.default_rng(seed)
    m, n, batch = 70, 100, 3  # n > n_iters: the KW bound is what is tested
    weight = rng.standard_normal((m, n)) * rng.uniform(0.1, 10.0)
    m_in, m_out = masks(rng, (batch, n), density), masks(rng, (batch, m), density)
    exact = masked_norms(weight, m_in, m_out)
    apply, apply_adjoint = dense_operator(xp, weight, m_in, m_out)
    upper, estimate, v = L.lanczos_upper_bound(apply, apply_adjoint, xp.asarray(rng.standard_normal((batch, n))),
                                               n_iters, 1e-6)
    up, est = to_numpy(upper), to_numpy(estimate)
    assert numpy.all(up >= exact), f"Lanczos bound {up} below the exact norm {exact}"
    # + UNDERFLOW: the absolute allowance for underflow, sqrt(2 (n + m)^2 eta) < 1e-150
    assert numpy.all(up <= exact * (1.06 if n_iters == 30 else 1.015) + UNDERFLOW), f"bound {up} loose vs {exact}"
    assert numpy.all(est <= exact * (1 + 1e-12) + 1e-300)
    numpy.testing.assert_allclose(est, exact, rtol=1e-6)
    assert_backend_close(xp.sum(v * v, axis=1), numpy.ones(batch), xp, rtol=1e-10, what="Ritz vector unit")


@settings(SETTINGS, max_examples=10)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 4), stride=st.integers(1, 3), padding=st.integers(0, 2),
       c=st.integers(2, 3), o=st.integers(1, 4), density=st.sampled_from([0.3, 0.7, 1.0]),
       n_iters=st.sampled_from([30, 60]))
def test_lanczos_upper_bound_conv(xp, seed, k, stride, padding, c, o, density, n_iters):
    rng = numpy.random.default_rng(seed)
    h, batch = 8, 3  # input dimension c * 64 >= 128 > n_iters
    weight = rng.standard_normal((o, c, k, k))
    matrix, out_shape = conv_matrix(weight, (c, h, h), stride, padding)
    m_in, m_out = masks(rng, (batch, c, h, h), density), masks(rng, (batch,) + tuple(out_shape), density)
    exact = masked_norms(matrix, m_in, m_out)
    apply, apply_adjoint = conv_operator(xp, weight, m_in, m_out, stride, padding)
    upper, estimate, _ = L.lanczos_upper_bound(apply, apply_adjoint, xp.asarray(rng.standard_normal((batch, c, h, h))),
                                               n_iters, 1e-6)
    up = to_numpy(upper)
    assert numpy.all(up >= exact), f"Lanczos bound {up} below the exact norm {exact}"
    # + UNDERFLOW: the absolute allowance for underflow, sqrt(2 (n + m)^2 eta) < 1e-150
    assert numpy.all(up <= exact * (1.06 if n_iters == 30 else 1.015) + UNDERFLOW), f"bound {up} loose vs {exact}"
    assert numpy.all(to_numpy(estimate) <= exact * (1 + 1e-12) + 1e-300)


def test_lanczos_full_dimension_and_vacuous(xp):
    rng = numpy.random.default_rng(5)
    weight = rng.standard_normal((12, 10))
    m_in, m_out = masks(rng, (2, 10), 0.8), masks(rng, (2, 12), 0.8)
    exact = masked_norms(weight, m_in, m_out)
    apply, apply_adjoint = dense_operator(xp, weight, m_in, m_out)
    v0 = xp.asarray(rng.standard_normal((2, 10)))
    upper, _, _ = L.lanczos_upper_bound(apply, apply_adjoint, v0, 25, 1e-9)  # k >= n: eps = 0
    up = to_numpy(upper)
    assert numpy.all(up >= exact) and numpy.all(up <= exact * (1 + 1e-7) + UNDERFLOW)
    upper, estimate, _ = L.lanczos_upper_bound(apply, apply_adjoint, v0, 2, 1e-9)  # eps >= 1
    assert numpy.all(to_numpy(upper) == math.inf)
    assert numpy.all(numpy.isfinite(to_numpy(estimate)))


def test_lanczos_low_rank_operator_breaks_down_cleanly(xp):
    """Rank r << n_iters: the Krylov space is exhausted after r + 1 steps; the iteration
    must restart in the complement, not lose orthogonality (which inflates Ritz values)."""
    rng = numpy.random.default_rng(9)
    for rank in (1, 3):
        weight = rng.standard_normal((40, rank)) @ rng.standard_normal((rank, 90))
        exact = scipy.linalg.svdvals(weight)[0]
        ones = numpy.ones((2, 90)), numpy.ones((2, 40))
        apply, apply_adjoint = dense_operator(xp, weight, *ones)
        upper, estimate, _ = L.lanczos_upper_bound(apply, apply_adjoint, xp.asarray(rng.standard_normal((2, 90))),
                                                   60, 1e-6)
        up = to_numpy(upper)
        assert numpy.all(up >= exact) and numpy.all(up <= exact * 1.015 + UNDERFLOW), (rank, up / exact)
        numpy.testing.assert_allclose(to_numpy(estimate), exact, rtol=1e-10)


def test_lanczos_stop_above(xp):
    """stop_above: where the bound cannot beat it the iteration stops early and the sample gets
    +inf; min(upper, stop_above) is still >= the exact norm; a stop_above that is never
    reached changes nothing."""
    rng = numpy.random.default_rng(13)
    weight = rng.standard_normal((50, 80))
    m_in, m_out = masks(rng, (3, 80), 0.7), masks(rng, (3, 50), 0.7)
    exact = masked_norms(weight, m_in, m_out)
    apply, apply_adjoint = dense_operator(xp, weight, m_in, m_out)
    calls = []

    def counted(v):
        calls.append(1)
        return apply(v)
    v0 = xp.asarray(rng.standard_normal((3, 80)))
    plain, _, _ = L.lanczos_upper_bound(counted, apply_adjoint, v0, 40, 1e-9)
    n_plain = len(calls)
    calls.clear()
    low = 0.9 * float(exact.min())
    upper, _, v = L.lanczos_upper_bound(counted, apply_adjoint, v0, 40, 1e-9, stop_above=low)
    assert len(calls) < n_plain / 2, "no early stop"
    assert numpy.all(to_numpy(upper) == math.inf)
    assert numpy.all(numpy.isfinite(to_numpy(v)))
    high = xp.asarray(10 * exact)  # per sample, never reached
    upper, _, _ = L.lanczos_upper_bound(apply, apply_adjoint, v0, 40, 1e-9, stop_above=high)
    assert_backend_close(upper, to_numpy(plain), xp, rtol=0, atol=0, what="unreached stop_above")
    mixed = xp.asarray(numpy.array([low, 10 * exact[1], low]))  # only some samples beaten: no stop
    upper, _, _ = L.lanczos_upper_bound(apply, apply_adjoint, v0, 40, 1e-9, stop_above=mixed)
    up = to_numpy(upper)
    assert up[0] == math.inf and up[2] == math.inf and up[1] == to_numpy(plain)[1]
    assert numpy.all(numpy.minimum(up, to_numpy(mixed)) >= numpy.minimum(exact, to_numpy(mixed)))
    assert numpy.all(to_numpy(plain) >= exact)
