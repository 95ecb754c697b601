"""Spectral norms: estimates and bounds checked against scipy's exact singular values.

Operators are built on the host (NumPy), moved to the backend under test with xp.asarray,
and compared with the exact norm of the explicitly materialised (masked) matrix:
- power iteration: never above the exact norm, equal to the exact power iteration computed
  from the SVD, converged to the exact norm when the spectral gap allows it;
- Lanczos upper bound: never below the exact norm, within a few percent of it;
- dense / Gram-iteration / convolution bounds: never below the exact norm and close to it;
- zero operators and zero start vectors give zeros, never NaN; warm starts stay converged.
"""
import math

import numpy
import pytest
import scipy.linalg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lipref.bounds import spectral as S
from lipref.primitives import conv2d, conv2d_transpose
from support import assert_backend_close, to_numpy

# xp is a function-scoped fixture but stateless (a namespace module): safe under @given
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ---------------------------------------------------------------- operators and exact norms

def dense_operator(xp, weight, m_in, m_out):
    """apply / apply_adjoint of m_out * W (m_in * v), per sample; host arrays in, xp ops."""
    w, mi, mo = xp.asarray(weight), xp.asarray(m_in), xp.asarray(m_out)

    def apply(v):
        return mo * xp.matmul(mi * v, w.T)

    def apply_adjoint(u):
        return mi * xp.matmul(mo * u, w)
    return apply, apply_adjoint


def conv_operator(xp, weight, m_in, m_out, stride, padding):
    """apply / apply_adjoint of m_out * conv2d(m_in * v), per sample."""
    w, mi, mo = xp.asarray(weight), xp.asarray(m_in), xp.asarray(m_out)
    hw = tuple(m_in.shape[2:])

    def apply(v):
        return mo * conv2d(mi * v, w, None, stride, padding)

    def apply_adjoint(u):
        return mi * conv2d_transpose(mo * u, w, stride, padding, hw)
    return apply, apply_adjoint


def conv_matrix(weight, in_chw, stride, padding):
    """The conv2d operator as a dense host matrix (outputs x inputs), by applying it to the
    basis vectors; also returns the output shape (O, OH, OW)."""
    n = int(numpy.prod(in_chw))
    out = numpy.asarray(conv2d(numpy.eye(n).reshape((n,) + tuple(in_chw)), weight, None, stride, padding))
    return out.reshape(n, -1).T.copy(), out.shape[1:]


def masked_norms(matrix, m_in, m_out):
    """Exact ||diag(m_out_b) M diag(m_in_b)||_2 per sample, by scipy.linalg.svdvals."""
    b = m_in.shape[0]
    mi, mo = m_in.reshape(b, -1), m_out.reshape(b, -1)
    return numpy.array([scipy.linalg.svdvals(mo[i][:, None] * matrix * mi[i][None, :])[0] for i in range(b)])


def masked_svd(matrix, m_in, m_out, i):
    b = m_in.shape[0]
    a = m_out.reshape(b, -1)[i][:, None] * matrix * m_in.reshape(b, -1)[i][None, :]
    _, s, vt = scipy.linalg.svd(a)
    return s, vt


def exact_power_sigma(matrix, m_in, m_out, v0, n_iters):
    """The power-iteration estimate in exact arithmetic, from the SVD: after t >= 1 steps
    v ~ V diag((s / s_1)^(2t)) V^T v0, and sigma = ||A v||."""
    b = m_in.shape[0]
    out = numpy.zeros(b)
    for i in range(b):
        s, vt = masked_svd(matrix, m_in, m_out, i)
        if s[0] == 0:
            continue
        c = vt[:len(s)] @ v0.reshape(b, -1)[i] * (s / s[0]) ** (2 * n_iters)
        out[i] = numpy.linalg.norm(s * c) / numpy.linalg.norm(c)
    return out


def masks(rng, shape, density):
    return (rng.random(shape) < density).astype(numpy.float64)


def gap(matrix, m_in, m_out, i):
    s, _ = masked_svd(matrix, m_in, m_out, i)
    return s[1] / s[0] if len(s) > 1 and s[0] > 0 else 0.0


# ---------------------------------------------------------------- power iteration

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

    upper, estimate, v = S.lanczos_upper_bound(apply, apply_adjoint, xp.asarray(v0), 4, 1e-6)
    up = to_numpy(upper)
    assert up[0] == 0.0 and to_numpy(estimate)[0] == 0.0, "zero operator: bound 0"
    assert up[1] == math.inf, "zero start vector: no guarantee, +inf"
    assert numpy.isfinite(up[2]) and up[2] >= exact[2]
    assert numpy.all(numpy.isfinite(to_numpy(v)))

    zero = xp.zeros((2, 3, 4), dtype=xp.float64)
    assert_backend_close(S.dense_spectral_norm_upper(zero), numpy.zeros(2), xp, atol=0, what="dense zero")
    assert_backend_close(S.gram_iteration_upper(zero, 5), numpy.zeros(2), xp, atol=0, what="gram zero")
    assert_backend_close(S.conv_spectral_norm_upper(xp.zeros((2, 3, 3, 3), dtype=xp.float64), (5, 5), 1, 1),
                         numpy.asarray(0.0), xp, atol=1e-300, what="conv zero")


def test_global_norm_power_iteration(xp):
    rng = numpy.random.default_rng(11)
    weight = rng.standard_normal((6, 4))
    w = xp.asarray(weight)
    sigma, u, v = S.global_norm_power_iteration(lambda x: xp.matmul(x, w.T), lambda y: xp.matmul(y, w),
                                                xp.asarray(rng.standard_normal((1, 4))), 500)
    assert sigma.ndim == 0
    assert_backend_close(sigma, scipy.linalg.svdvals(weight)[0], xp, rtol=1e-8, what="global sigma")


# ---------------------------------------------------------------- Lanczos

def test_kw_relative_error_solves_the_theorem():
    for n, k, p in ((100, 30, 1e-6), (5000, 60, 1e-9), (10, 3, 0.5)):
        eps = S.kw_relative_error(n, k, p)
        assert math.isclose(1.648 * math.sqrt(n) * math.exp(-math.sqrt(eps) * (2 * k - 1)), p, rel_tol=1e-12)
    assert S.kw_relative_error(50, 50, 1e-9) == 0.0  # k >= n: the Krylov space is invariant
    with pytest.raises(ValueError):
        S.kw_relative_error(50, 10, 0.0)


@settings(SETTINGS, max_examples=10)
@given(seed=st.integers(0, 2**32 - 1), density=st.sampled_from([0.3, 0.7, 1.0]), n_iters=st.sampled_from([30, 60]))
def test_lanczos_upper_bound_dense(xp, seed, density, n_iters):
    rng = numpy.random.default_rng(seed)
    m, n, batch = 70, 100, 3  # n > n_iters: the KW bound is what is tested
    weight = rng.standard_normal((m, n)) * rng.uniform(0.1, 10.0)
    m_in, m_out = masks(rng, (batch, n), density), masks(rng, (batch, m), density)
    exact = masked_norms(weight, m_in, m_out)
    apply, apply_adjoint = dense_operator(xp, weight, m_in, m_out)
    upper, estimate, v = S.lanczos_upper_bound(apply, apply_adjoint, xp.asarray(rng.standard_normal((batch, n))),
                                               n_iters, 1e-6)
    up, est = to_numpy(upper), to_numpy(estimate)
    assert numpy.all(up >= exact), f"Lanczos bound {up} below the exact norm {exact}"
    assert numpy.all(up <= exact * (1.06 if n_iters == 30 else 1.015)), f"bound {up} loose vs {exact}"
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
    upper, estimate, _ = S.lanczos_upper_bound(apply, apply_adjoint, xp.asarray(rng.standard_normal((batch, c, h, h))),
                                               n_iters, 1e-6)
    up = to_numpy(upper)
    assert numpy.all(up >= exact), f"Lanczos bound {up} below the exact norm {exact}"
    assert numpy.all(up <= exact * (1.06 if n_iters == 30 else 1.015)), f"bound {up} loose vs {exact}"
    assert numpy.all(to_numpy(estimate) <= exact * (1 + 1e-12) + 1e-300)


def test_lanczos_full_dimension_and_vacuous(xp):
    rng = numpy.random.default_rng(5)
    weight = rng.standard_normal((12, 10))
    m_in, m_out = masks(rng, (2, 10), 0.8), masks(rng, (2, 12), 0.8)
    exact = masked_norms(weight, m_in, m_out)
    apply, apply_adjoint = dense_operator(xp, weight, m_in, m_out)
    v0 = xp.asarray(rng.standard_normal((2, 10)))
    upper, _, _ = S.lanczos_upper_bound(apply, apply_adjoint, v0, 25, 1e-9)  # k >= n: eps = 0
    up = to_numpy(upper)
    assert numpy.all(up >= exact) and numpy.all(up <= exact * (1 + 1e-7))
    upper, estimate, _ = S.lanczos_upper_bound(apply, apply_adjoint, v0, 2, 1e-9)  # eps >= 1
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
        upper, estimate, _ = S.lanczos_upper_bound(apply, apply_adjoint, xp.asarray(rng.standard_normal((2, 90))),
                                                   60, 1e-6)
        up = to_numpy(upper)
        assert numpy.all(up >= exact) and numpy.all(up <= exact * 1.015), (rank, up / exact)
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
    plain, _, _ = S.lanczos_upper_bound(counted, apply_adjoint, v0, 40, 1e-9)
    n_plain = len(calls)
    calls.clear()
    low = 0.9 * float(exact.min())
    upper, _, v = S.lanczos_upper_bound(counted, apply_adjoint, v0, 40, 1e-9, stop_above=low)
    assert len(calls) < n_plain / 2, "no early stop"
    assert numpy.all(to_numpy(upper) == math.inf)
    assert numpy.all(numpy.isfinite(to_numpy(v)))
    high = xp.asarray(10 * exact)  # per sample, never reached
    upper, _, _ = S.lanczos_upper_bound(apply, apply_adjoint, v0, 40, 1e-9, stop_above=high)
    assert_backend_close(upper, to_numpy(plain), xp, rtol=0, atol=0, what="unreached stop_above")
    mixed = xp.asarray(numpy.array([low, 10 * exact[1], low]))  # only some samples beaten: no stop
    upper, _, _ = S.lanczos_upper_bound(apply, apply_adjoint, v0, 40, 1e-9, stop_above=mixed)
    up = to_numpy(upper)
    assert up[0] == math.inf and up[2] == math.inf and up[1] == to_numpy(plain)[1]
    assert numpy.all(numpy.minimum(up, to_numpy(mixed)) >= numpy.minimum(exact, to_numpy(mixed)))
    assert numpy.all(to_numpy(plain) >= exact)


# ---------------------------------------------------------------- dense bounds

@settings(SETTINGS, max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 16), n=st.integers(1, 16), batch=st.integers(1, 4),
       rank=st.integers(0, 16), scale=st.sampled_from([1e-3, 1.0, 1e4]))
def test_dense_spectral_norm_upper(xp, seed, m, n, batch, rank, scale):
    rng = numpy.random.default_rng(seed)
    r = min(rank, m, n)
    mats = scale * rng.standard_normal((batch, m, r)) @ rng.standard_normal((batch, r, n))  # rank <= r
    exact = numpy.array([scipy.linalg.svdvals(a)[0] if r else 0.0 for a in mats])
    upper = S.dense_spectral_norm_upper(xp.asarray(mats))
    up = to_numpy(upper)
    assert numpy.all(up >= exact), f"{up} below {exact}"
    assert_backend_close(upper, exact, xp, rtol=1e-10, atol=0, what="dense bound tight")


# 1e200-scaled matrices overflow the fast sum of squares in spectral._norms on purpose; it
# sees the inf and recomputes with the largest entry scaled out (what this test checks)
@pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")
@settings(SETTINGS, max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 16), n=st.integers(1, 16), batch=st.integers(1, 3),
       log_scale=st.sampled_from([-100, 0, 200]))
def test_gram_iteration_upper(xp, seed, m, n, batch, log_scale):
    rng = numpy.random.default_rng(seed)
    mats = rng.standard_normal((batch, m, n)) * 10.0 ** log_scale  # 1e200: G_1 would overflow unscaled
    exact = numpy.array([scipy.linalg.svdvals(a)[0] for a in mats])
    bounds = [to_numpy(S.gram_iteration_upper(xp.asarray(mats), t)) for t in range(0, 13)]
    for t, b in enumerate(bounds):
        assert numpy.all(numpy.isfinite(b)) and numpy.all(b >= exact), f"t={t}: {b} below {exact}"
    for prev, nxt in zip(bounds, bounds[1:]):
        assert numpy.all(nxt <= prev * (1 + 1e-12)), "Gram bound should not grow with t"
    frob = numpy.linalg.norm(mats / 10.0 ** log_scale, axis=(1, 2)) * 10.0 ** log_scale
    numpy.testing.assert_allclose(bounds[0], frob, rtol=1e-12)  # t=0: the Frobenius norm
    assert_backend_close(S.gram_iteration_upper(xp.asarray(mats), 22), exact, xp, rtol=1e-7, atol=0,
                         what="Gram iteration converges")
    single = S.gram_iteration_upper(xp.asarray(mats[0]), 6)
    assert single.ndim == 0
    assert_backend_close(single, bounds[6][0], xp, rtol=1e-15, atol=0, what="single matrix = batch entry")


# ---------------------------------------------------------------- convolutions

@settings(SETTINGS, max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 4), stride=st.integers(1, 3), padding=st.integers(0, 2),
       c=st.integers(1, 4), o=st.integers(1, 4), h=st.integers(3, 8), w=st.integers(3, 8))
def test_conv_spectral_norm_upper(xp, seed, k, stride, padding, c, o, h, w):
    if k > h + 2 * padding or k > w + 2 * padding:
        k = min(h, w) + 2 * padding  # keep the draw: the largest kernel that fits
    rng = numpy.random.default_rng(seed)
    weight = rng.standard_normal((o, c, k, k))
    matrix, _ = conv_matrix(weight, (c, h, w), stride, padding)
    exact = scipy.linalg.svdvals(matrix)[0]
    bound = S.conv_spectral_norm_upper(xp.asarray(weight), (h, w), stride, padding)
    assert bound.ndim == 0 and bound.dtype == xp.float64
    b = float(to_numpy(bound))
    assert b >= exact, f"conv bound {b} below the exact norm {exact}"
    if stride == 1:  # the circular embedding costs at most a modest factor on small inputs
        assert b <= 2.5 * exact, f"conv bound {b} loose vs {exact}"


def circular_strided_matrix(weight, grid_hw, stride):
    """The stride-s circular cross-correlation on an Nh x Nw grid as a dense host matrix:
    out[o, i, j] = sum_{c, a, b} w[o, c, a, b] x[c, (s i + a) mod Nh, (s j + b) mod Nw]."""
    o, c, kh, kw = weight.shape
    nh, nw = grid_hw
    n = c * nh * nw
    basis = numpy.eye(n).reshape(n, c, nh, nw)
    out = 0
    for a in range(kh):
        for b in range(kw):
            shifted = numpy.roll(basis, (-a, -b), axis=(2, 3))[:, :, ::stride, ::stride]
            out = out + numpy.einsum("oc,nchw->nohw", weight[:, :, a, b], shifted)
    return out.reshape(n, -1).T


@settings(SETTINGS, max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 5), stride=st.integers(1, 3), c=st.integers(1, 3),
       o=st.integers(1, 3), mh=st.integers(1, 4), mw=st.integers(1, 4))
def test_polyphase_circulant_is_exact(xp, seed, k, stride, c, o, mh, mw):
    """A stride-s circular convolution on an (s Mh) x (s Mw) grid has exactly the norm of the
    stride-1 circular convolution of its polyphase kernel on the Mh x Mw grid (kernels larger
    than the grid included: their taps wrap)."""
    rng = numpy.random.default_rng(seed)
    weight = rng.standard_normal((o, c, k, k))
    exact = scipy.linalg.svdvals(circular_strided_matrix(weight, (stride * mh, stride * mw), stride))[0]
    phases = S.polyphase_kernel(xp.asarray(weight), stride)
    assert tuple(phases.shape) == (o, c * stride * stride, -(-k // stride), -(-k // stride))
    bound = float(to_numpy(S.circulant_norm_upper(phases, (mh, mw))))
    assert exact <= bound <= exact * (1 + 1e-10), (bound, exact)


@settings(SETTINGS, max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), k=st.sampled_from([3, 4]), stride=st.sampled_from([1, 2]),
       padding=st.sampled_from([0, 1]), c=st.integers(1, 4), o=st.integers(1, 4), h=st.integers(4, 9),
       w=st.integers(4, 9))
def test_conv_bound_never_below_exact_nor_above_plain_circulant(xp, seed, k, stride, padding, c, o, h, w):
    """The polyphase bound is >= the exact norm of the zero-padded strided conv, and never
    above the plain stride-1 circulant bound on the (H + 2p) x (W + 2p) grid (the bound before
    the polyphase form). (No tightness factor here: with a kernel as large as the input a
    layer has a single output, and any circulant bound can be up to sqrt(kh kw) above it.)"""
    rng = numpy.random.default_rng(seed)
    weight = rng.standard_normal((o, c, k, k))
    matrix, _ = conv_matrix(weight, (c, h, w), stride, padding)
    exact = scipy.linalg.svdvals(matrix)[0]
    new = float(to_numpy(S.conv_spectral_norm_upper(xp.asarray(weight), (h, w), stride, padding)))
    old = float(to_numpy(S.circulant_norm_upper(xp.asarray(weight), (h + 2 * padding, w + 2 * padding))))
    assert new >= exact, f"bound {new} below the exact norm {exact}"
    assert new <= old * (1 + 1e-9), f"bound {new} above the plain circulant bound {old}"


def test_conv_bound_grids_are_valid():
    """The grids satisfy the conditions the proof needs: multiples of s, N >= H + p, N >= s OH."""
    for h, k, s, p in ((28, 4, 2, 1), (14, 3, 1, 1), (5, 4, 3, 2), (7, 1, 3, 0), (9, 4, 2, 0)):
        oh = (h + 2 * p - k) // s + 1
        grids = S.circular_grids((h, h + 1), (k, k), s, p)
        assert grids == sorted(grids) and len(grids) >= 4
        for nh, nw in grids:
            assert nh % s == 0 and nw % s == 0
            assert nh >= max(h + p, s * oh) and nw >= h + 1 + p


def test_conv_bound_tight_on_4c3f_shapes(xp):
    """The strided layers of 4c3f (4x4 kernel, stride 2, padding 1): the old stride-1
    circulant bound was about 2x the exact norm; the polyphase one is within 3%."""
    rng = numpy.random.default_rng(8)
    weight = rng.standard_normal((4, 3, 4, 4))
    matrix, _ = conv_matrix(weight, (3, 12, 12), 2, 1)
    exact = scipy.linalg.svdvals(matrix)[0]
    b = float(to_numpy(S.conv_spectral_norm_upper(xp.asarray(weight), (12, 12), 2, 1)))
    assert exact <= b <= 1.03 * exact, b / exact


def test_conv_spectral_norm_upper_tight_on_larger_inputs(xp):
    rng = numpy.random.default_rng(2)
    weight = rng.standard_normal((4, 3, 3, 3))
    matrix, _ = conv_matrix(weight, (3, 10, 10), 1, 1)
    exact = scipy.linalg.svdvals(matrix)[0]
    b = float(to_numpy(S.conv_spectral_norm_upper(xp.asarray(weight), (10, 10), 1, 1)))
    assert exact <= b <= 1.25 * exact


def test_conv_circular_case_is_exact(xp):
    """A 1x1 kernel: conv2d is W applied at every pixel, norm ||W||_2 exactly, and the
    bound is the dense bound of W up to its rounding margin."""
    rng = numpy.random.default_rng(4)
    weight = rng.standard_normal((5, 3, 1, 1))
    exact = scipy.linalg.svdvals(weight[:, :, 0, 0])[0]
    bound = S.conv_spectral_norm_upper(xp.asarray(weight), (4, 6), 1, 0)
    assert float(to_numpy(bound)) >= exact
    assert_backend_close(bound, exact, xp, rtol=1e-12, atol=0, what="1x1 conv")


# ---------------------------------------------------------------- dense-Gram Cholesky certificate

@settings(SETTINGS, max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 14), n=st.integers(1, 14), rank=st.integers(0, 14),
       log_scale=st.integers(-30, 30))
def test_gram_cholesky_upper_dense(xp, seed, m, n, rank, log_scale):
    """On drawn dense matrices (rank-deficient and zero ones, tiny and huge scales): never
    below the exact norm, and above it by at most the margin the certificate promises."""
    rng = numpy.random.default_rng(seed)
    rank = min(rank, m, n)
    matrix = (rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))) * 2.0 ** log_scale
    w = xp.asarray(matrix)

    def apply(v):
        return xp.matmul(v, w.T)

    def apply_adjoint(u):
        return xp.matmul(u, w)
    abs_upper = S.dense_spectral_norm_upper(xp.abs(w)[None, ...])[0]
    upper, estimate = S.gram_cholesky_upper(apply, apply_adjoint, (n,), (m,), max(m, n), abs_upper, rng)
    exact = scipy.linalg.svdvals(matrix)[0] if rank else 0.0
    b = float(to_numpy(upper))
    assert upper.ndim == 0 and upper.dtype == xp.float64
    assert b >= exact, f"certificate {b} below the exact norm {exact}"
    assert b <= exact * (1 + 1e-6) + 1e-150, (b, exact)  # a zero matrix: sqrt(smallest normal)
    assert float(to_numpy(estimate)) <= exact * (1 + 1e-12) + 1e-300


@settings(SETTINGS, max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 4), stride=st.integers(1, 3), padding=st.integers(0, 2),
       c=st.integers(1, 3), o=st.integers(1, 3), h=st.integers(3, 8), w=st.integers(3, 8))
def test_conv_spectral_norm_certified(xp, seed, k, stride, padding, c, o, h, w):
    """The certified conv norm is >= the exact norm of the materialised operator, within
    1e-6 of it (the polyphase bound is up to a few percent above it here), and never above
    the polyphase bound; with max_dim below the layer's size it is the polyphase bound."""
    k = min(k, h + 2 * padding, w + 2 * padding)
    rng = numpy.random.default_rng(seed)
    weight = rng.standard_normal((o, c, k, k))
    matrix, _ = conv_matrix(weight, (c, h, w), stride, padding)
    exact = scipy.linalg.svdvals(matrix)[0]
    wx = xp.asarray(weight)
    cert = S.conv_spectral_norm_certified(wx, (h, w), stride, padding, rng)
    poly = float(to_numpy(S.conv_spectral_norm_upper(wx, (h, w), stride, padding)))
    b = float(to_numpy(cert))
    assert exact <= b <= exact * (1 + 1e-6), (b, exact)
    assert b <= poly
    fallback = S.conv_spectral_norm_certified(wx, (h, w), stride, padding, rng, max_dim=min(matrix.shape) - 1)
    assert float(to_numpy(fallback)) == poly


def test_gram_cholesky_refuses_a_margin_below_the_norm(xp):
    """A shift below lambda_max leaves mu I - B indefinite by far more than rounding, so
    Cholesky must break down and no certificate is given (+inf), whatever the estimate."""
    rng = numpy.random.default_rng(3)
    weight = rng.standard_normal((3, 2, 3, 3))
    wx = xp.asarray(weight)

    def apply(v):
        return conv2d(v, wx, None, 1, 1)

    def apply_adjoint(y):
        return conv2d_transpose(y, wx, 1, 1, (6, 6))
    abs_upper = S.conv_spectral_norm_upper(xp.abs(wx), (6, 6), 1, 1)
    for margins in ((-1e-3,), (-0.5, -1e-2)):
        upper, estimate = S.gram_cholesky_upper(apply, apply_adjoint, (2, 6, 6), (3, 6, 6), 27, abs_upper, rng,
                                                margins=margins)
        assert math.isinf(float(to_numpy(upper)))
        assert float(to_numpy(estimate)) > 0
    upper, _ = S.gram_cholesky_upper(apply, apply_adjoint, (2, 6, 6), (3, 6, 6), 27, abs_upper, rng,
                                     margins=(-1e-3, 1e-6))  # the second margin certifies
    matrix, _ = conv_matrix(weight, (2, 6, 6), 1, 1)
    exact = scipy.linalg.svdvals(matrix)[0]
    assert exact <= float(to_numpy(upper)) <= exact * (1 + 1e-6)


def test_cholesky_or_none_reports_breakdown_on_every_backend(xp):
    """The certificate's proof step: a positive definite matrix gives its factor, an
    indefinite or singular one gives None -- never an unchecked partial factor."""
    from lipref.backend import cholesky_or_none
    good = numpy.array([[4.0, 1.0], [1.0, 3.0]])
    factor = cholesky_or_none(xp, xp.asarray(good))
    assert factor is not None
    assert_backend_close(xp.matmul(factor, xp.matrix_transpose(factor)), good, xp, rtol=1e-14, atol=0,
                         what="L L^T")
    for bad in ([[1.0, 2.0], [2.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]], [[-1.0, 0.0], [0.0, 5.0]]):
        assert cholesky_or_none(xp, xp.asarray(numpy.array(bad))) is None, bad


# ---------------------------------------------------------------- scaling between steps

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


@pytest.mark.parametrize("batch, dim", [(1, 7), (3, 4096), (32, 28800), (32, 900), (32, 97), (600, 130), (0, 5)])
def test_norms_in_pieces_and_their_range(xp, batch, dim):
    """Per-sample norms, summed over pieces where that lets NumPy drop the interpreter lock,
    equal numpy.linalg.norm, and the range reported is theirs."""
    pieces = S._pieces_per_sample(batch, dim)
    assert dim % pieces == 0 and (pieces == 1 or (dim // pieces >= 64 and batch * pieces >= 512))
    rng = numpy.random.default_rng(batch + dim)
    x = rng.standard_normal((batch, dim))
    norms, smallest, largest = S._norms_and_range(xp.asarray(x))
    expected = numpy.linalg.norm(x, axis=1)
    assert_backend_close(norms, expected, xp, rtol=1e-13, what="norms")
    if batch:
        assert smallest == pytest.approx(expected.min(), rel=1e-13)
        assert largest == pytest.approx(expected.max(), rel=1e-13)


def test_norms_of_exactly_zero_samples_stay_on_the_fast_path(xp, monkeypatch):
    """A sample that is exactly zero (a masked operator with nothing left) has norm 0 on
    the plain sum-of-squares path; only squares that may have underflowed need scaling."""
    rng = numpy.random.default_rng(4)
    x = rng.standard_normal((3, 40))
    x[1] = 0.0
    scaled = []
    real = S._scaled_norms
    monkeypatch.setattr(S, "_scaled_norms", lambda a: scaled.append(1) or real(a))
    norms, smallest, largest = S._norms_and_range(xp.asarray(x))
    assert_backend_close(norms, numpy.linalg.norm(x, axis=1), xp, rtol=1e-14, atol=0, what="norms")
    assert smallest == 0.0 and not scaled, "zero samples took the scaled path"
    x[2] = 1e-200  # squares underflow to a zero sum, but the sample is not zero
    norms, smallest, _ = S._norms_and_range(xp.asarray(x))
    assert scaled, "underflowing squares must take the scaled path"
    expected = numpy.linalg.norm(x, axis=1)
    expected[2] = 1e-200 * math.sqrt(40)  # numpy.linalg.norm itself underflows to 0 here
    assert_backend_close(norms, expected, xp, rtol=1e-14, atol=0, what="tiny norms")
    assert smallest == 0.0
